package processor

import (
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/internal/bus"
	"github.com/iotpipe/iotpipe/processor/window"
)

// BenchmarkHandle is the processor's per-record work on one partition —
// headers, decoding, the window engine (10 s and 1 min) and, unless
// windows-only, the readings rows — without Kafka and storage: records as
// BenchmarkProcessor produces them, 1,000 devices, 2 readings each.
//
//	go test -run '^$' -bench Handle ./processor
func BenchmarkHandle(b *testing.B) {
	const n, devices = 100_000, 1000
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	recs := make([]*kgo.Record, n)
	for i := range recs {
		at := base.Add(time.Duration(i) * time.Millisecond)
		dev := fmt.Sprintf("dev-%04d", i%devices)
		recs[i] = &kgo.Record{Key: []byte(dev), Offset: int64(i),
			Value: fmt.Appendf(nil, `{"ts":%d,"temperature":%.2f,"humidity":%.1f}`, at.UnixMilli(), 15+float64(i%2000)/100, 30+float64(i%400)/10),
			Headers: []kgo.RecordHeader{{Key: bus.HeaderDevice, Value: []byte(dev)},
				{Key: bus.HeaderTopic, Value: []byte("/devices/" + dev + "/events")},
				{Key: bus.HeaderReceivedAt, Value: bus.FormatMillis(at)}}}
	}
	for _, windowsOnly := range []bool{false, true} {
		b.Run(fmt.Sprint("windows-only=", windowsOnly), func(b *testing.B) {
			p := &Processor{m: newMetrics(), cfg: Config{WindowsOnly: windowsOnly}}
			wcfg := window.Config{Sizes: sizes, AllowedLateness: 5 * time.Second, IdleTimeout: time.Hour}
			b.ReportAllocs()
			rows := 0
			for b.Loop() {
				part := newPartition(wcfg, time.Now())
				var err error
				if part.eng, err = window.New(part.wcfg, window.Checkpoint{Offset: -1, Next: -1}); err != nil {
					b.Fatal(err)
				}
				for _, r := range recs {
					rows += p.handle(part, r)
					if len(part.readings)+len(part.windows) > 50_000 {
						part.readings, part.windows = part.readings[:0], part.windows[:0]
					}
				}
			}
			if rows == 0 {
				b.Fatal("no rows")
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "records/s")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/record")
		})
	}
}
