// Package bus describes the Kafka topic layout shared by every iotpipe stage:
// topic names, record headers, and the client options each stage starts from.
// It is the contract between broker, ingest, registry and processor, so a
// record written by one stage is read the same way by the others.
package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Record headers on the telemetry topic. Ingest forwards the payload bytes
// untouched and describes them here; the processor reads them back.
const (
	HeaderDevice      = "iot-device"      // device id (also the record key)
	HeaderTopic       = "iot-topic"       // MQTT topic the device published to
	HeaderContentType = "content-type"    // MIME type if the device said (MQTT 5), else empty
	HeaderReceivedAt  = "iot-received-at" // broker receive time, Unix milliseconds, decimal
	HeaderReason      = "iot-reason"      // dead-letter reason code, e.g. "malformed_json"
	HeaderDetail      = "iot-detail"      // dead-letter human readable detail
	HeaderSource      = "iot-source"      // dead-letter: "topic/partition/offset" of the original record
)

// Topics are the names of the topics iotpipe uses. All share one prefix so
// several installations can share a Kafka cluster.
type Topics struct {
	Telemetry  string
	Registry   string
	State      string
	Downlink   string
	DeadLetter string
	Presence   string // compacted: which instance holds each device (package downlink)
}

// DefaultPrefix is the topic prefix used when none is configured.
const DefaultPrefix = "iot."

// TopicNames returns the topic names for a prefix ("iot." gives iot.telemetry, ...).
func TopicNames(prefix string) Topics {
	return Topics{
		Telemetry:  prefix + "telemetry",
		Registry:   prefix + "registry",
		State:      prefix + "state",
		Downlink:   prefix + "downlink",
		DeadLetter: prefix + "deadletter",
		Presence:   prefix + "presence",
	}
}

// TopicSpec says how to create a topic.
type TopicSpec struct {
	Name       string
	Partitions int32
	Configs    map[string]*string
}

// Specs returns the creation specs for all topics. Registry and state are
// compacted because only the latest value per device matters.
func (t Topics) Specs(telemetryPartitions int32) []TopicSpec {
	compact, hour := "compact", "3600000"
	return []TopicSpec{
		{Name: t.Telemetry, Partitions: telemetryPartitions},
		{Name: t.Registry, Partitions: 1, Configs: map[string]*string{"cleanup.policy": &compact}},
		{Name: t.State, Partitions: telemetryPartitions, Configs: map[string]*string{"cleanup.policy": &compact}},
		// Commands are live requests, never replayed (package downlink):
		// an hour is plenty for inspection.
		{Name: t.Downlink, Partitions: 1, Configs: map[string]*string{"retention.ms": &hour}},
		{Name: t.DeadLetter, Partitions: 1},
		{Name: t.Presence, Partitions: 1, Configs: map[string]*string{"cleanup.policy": &compact}},
	}
}

// EnsureTopics creates the topics that do not exist yet. Existing topics are
// left alone (their partition count is the operator's business).
func EnsureTopics(ctx context.Context, cl *kgo.Client, specs []TopicSpec, replicationFactor int16) error {
	adm := kadm.NewClient(cl)
	for _, s := range specs {
		resp, err := adm.CreateTopic(ctx, s.Partitions, replicationFactor, s.Configs, s.Name)
		if err == nil {
			err = resp.Err
		}
		if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", s.Name, err)
		}
	}
	return nil
}

// ParseBrokers splits a comma separated broker list, dropping blanks.
func ParseBrokers(s string) []string {
	var out []string
	for _, b := range strings.Split(s, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

// Header returns the value of the first header named key, or "".
func Header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// FormatMillis and ParseMillis encode times in headers.
func FormatMillis(t time.Time) []byte { return strconv.AppendInt(nil, t.UnixMilli(), 10) }

// ParseMillis is the inverse of FormatMillis.
func ParseMillis(b string) (time.Time, error) {
	ms, err := strconv.ParseInt(b, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("bad millisecond timestamp %q: %w", b, err)
	}
	return time.UnixMilli(ms).UTC(), nil
}
