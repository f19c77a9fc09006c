package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

func TestFlagBeatsEnvironment(t *testing.T) {
	t.Setenv("IOTPIPE_KAFKA_BROKERS", "from-env:9092")
	t.Setenv("IOTPIPE_WINDOW_SIZES", "30s,5m")
	o := defaultOptions()
	fs := newFlagSet("x", io.Discard)
	o.addKafka(fs, false)
	o.addStorage(fs, false)
	if err := parse(fs, nil); err != nil {
		t.Fatal(err)
	}
	if o.kafkaBrokers != "from-env:9092" || o.windowSizes.String() != "30s,5m0s" {
		t.Errorf("from env: brokers %q sizes %s", o.kafkaBrokers, o.windowSizes.String())
	}
	o = defaultOptions()
	fs = newFlagSet("x", io.Discard)
	o.addKafka(fs, false)
	if err := parse(fs, []string{"--kafka-brokers", "from-flag:9092"}); err != nil {
		t.Fatal(err)
	}
	if o.kafkaBrokers != "from-flag:9092" {
		t.Errorf("flag did not win: %q", o.kafkaBrokers)
	}
}

func TestBadEnvironmentNamesTheVariable(t *testing.T) {
	t.Setenv("IOTPIPE_PARTITIONS", "many")
	o := defaultOptions()
	fs := newFlagSet("x", io.Discard)
	o.addKafka(fs, false)
	err := parse(fs, nil)
	if err == nil || !strings.Contains(err.Error(), "IOTPIPE_PARTITIONS") {
		t.Errorf("err = %v, want one naming IOTPIPE_PARTITIONS", err)
	}
}

func TestValidateWindowSizes(t *testing.T) {
	for _, bad := range [][]time.Duration{{1500 * time.Millisecond}, {0}, {-time.Minute}} {
		o := defaultOptions()
		o.partitions = 1
		o.windowSizes = bad
		if err := o.validate(); err == nil {
			t.Errorf("window sizes %v accepted", bad)
		}
	}
}

func TestProcessorDurationsMustBePositive(t *testing.T) {
	for _, c := range []struct {
		flag string
		set  func(*options)
	}{
		{"--session-timeout", func(o *options) { o.sessionTimeout = 0 }},
		{"--flush-interval", func(o *options) { o.flushInterval = 0 }},
		{"--flush-interval", func(o *options) { o.flushInterval = -time.Second }},
	} {
		o := defaultOptions()
		o.sessionTimeout, o.flushInterval = 45*time.Second, time.Second
		c.set(o)
		if _, err := (&env{o: o}).newProcessor(nil); err == nil || !strings.Contains(err.Error(), c.flag) {
			t.Errorf("err = %v, want one naming %s", err, c.flag)
		}
	}
}

func TestExitCodes(t *testing.T) {
	cases := []struct {
		args []string
		code int
	}{
		{nil, 2},
		{[]string{"frobnicate"}, 2},
		{[]string{"help"}, 0},
		{[]string{"version"}, 0},
		{[]string{"run", "--no-such-flag"}, 2},
		{[]string{"api"}, 1}, // needs --clickhouse-addr
		{[]string{"query", "--analysis", "temperature"}, 1},
	}
	for _, c := range cases {
		var stdout, stderr bytes.Buffer
		if got := mainWithExit(context.Background(), c.args, &stdout, &stderr); got != c.code {
			t.Errorf("iotpipe %v: exit %d, want %d (stderr %q)", c.args, got, c.code, stderr.String())
		}
	}
}
