package bus

import (
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

func TestParseBrokers(t *testing.T) {
	cases := map[string][]string{
		"":                       nil,
		" , ":                    nil,
		"a:9092":                 {"a:9092"},
		" a:9092 ,b:9093,, c:1 ": {"a:9092", "b:9093", "c:1"},
	}
	for in, want := range cases {
		if got := ParseBrokers(in); !slices.Equal(got, want) {
			t.Errorf("ParseBrokers(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMillisRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 25, 19, 0, 0, 123_456_789, time.UTC)
	got, err := ParseMillis(string(FormatMillis(at)))
	if err != nil || !got.Equal(at.Truncate(time.Millisecond)) {
		t.Fatalf("round trip of %v = %v, %v", at, got, err)
	}
	for _, bad := range []string{"", "12a", "1.5"} {
		if _, err := ParseMillis(bad); err == nil {
			t.Errorf("ParseMillis(%q) accepted", bad)
		}
	}
}

func TestHeaderFirstMatch(t *testing.T) {
	r := &kgo.Record{Headers: []kgo.RecordHeader{{Key: HeaderDevice, Value: []byte("d1")}, {Key: HeaderDevice, Value: []byte("d2")}}}
	if got := Header(r, HeaderDevice); got != "d1" {
		t.Errorf("Header = %q, want the first, d1", got)
	}
	if got := Header(r, HeaderTopic); got != "" {
		t.Errorf("missing header = %q, want empty", got)
	}
}

func TestTopicNamesSharePrefix(t *testing.T) {
	tn := TopicNames("acme.")
	for _, s := range tn.Specs(3) {
		if s.Name[:5] != "acme." {
			t.Errorf("topic %q lacks the prefix", s.Name)
		}
	}
	if tn.Telemetry != "acme.telemetry" || tn.Registry != "acme.registry" || tn.DeadLetter != "acme.deadletter" {
		t.Errorf("names = %+v", tn)
	}
}
