package storage

import (
	"fmt"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/internal/testcpu"
)

// BenchmarkWriteBatch measures WriteBatch throughput on chDB with a
// processor-like batch: 20k readings plus their 10s windows.
//
//	go test ./storage -run '^$' -bench WriteBatch
func BenchmarkWriteBatch(b *testing.B) {
	s := openT(b, chdbKind().cfg(b))
	ctx := ctxT(b)
	const devices, perDevice = 100, 200 // 200 readings each, 1 per second
	var (
		rs []Reading
		ws []Window
	)
	for d := range devices {
		dev := fmt.Sprintf("dev-%04d", d)
		for w := range perDevice / 10 {
			vals := make([]float64, 10)
			for i := range vals {
				vals[i] = float64(d) + float64(w*10+i)*0.25
				rs = append(rs, Reading{Device: dev, Metric: "temperature", Time: t0.Add(time.Duration(w*10+i) * time.Second), Value: vals[i]})
			}
			ws = append(ws, win(dev, "temperature", 10*time.Second, t0.Add(time.Duration(w)*10*time.Second), vals...))
		}
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		for j := range ws {
			ws[j].Version = uint64(i + 1)
		}
		if err := s.WriteBatch(ctx, ws, rs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*(len(rs)+len(ws)))/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkWriteReadings measures the readings insert alone at the
// processor's default MaxBatchRows (50k): raw readings are most of the rows
// it writes.
//
//	go test ./storage -run '^$' -bench WriteReadings
func BenchmarkWriteReadings(b *testing.B) {
	s := openT(b, chdbKind().cfg(b))
	ctx := ctxT(b)
	const devices, perDevice = 250, 200
	rs := make([]Reading, 0, devices*perDevice)
	for i := range perDevice { // in event-time order, devices interleaved, as the processor sees them
		for d := range devices {
			rs = append(rs, Reading{Device: fmt.Sprintf("dev-%04d", d), Metric: "temperature",
				Time: t0.Add(time.Duration(i)*time.Second + time.Duration(d)*time.Millisecond), Value: float64(d) + float64(i)*0.25})
		}
	}
	for b.Loop() {
		if err := s.WriteBatch(ctx, nil, rs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(rs))/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkWriteWindows measures the windows insert alone at the
// processor's default MaxBatchRows (50k), as a windows-only processor
// (--raw-readings=false) writes them: 1,000 devices × 2 metrics × 25 windows.
//
//	go test ./storage -run '^$' -bench WriteWindows
func BenchmarkWriteWindows(b *testing.B) {
	s := openT(b, chdbKind().cfg(b))
	ctx := ctxT(b)
	const devices, perSeries = 1000, 25
	ws := make([]Window, 0, devices*2*perSeries)
	for w := range perSeries { // windows close in time order, devices interleaved
		for d := range devices {
			dev := fmt.Sprintf("dev-%04d", d)
			start := t0.Add(time.Duration(w) * 10 * time.Second)
			ws = append(ws, win(dev, "temperature", 10*time.Second, start, 20+float64(d%7), 21, 22),
				win(dev, "humidity", 10*time.Second, start, 40+float64(d%5), 41))
		}
	}
	for i := 0; b.Loop(); i++ {
		for j := range ws {
			ws[j].Version = uint64(i + 1)
		}
		if err := s.WriteBatch(ctx, ws, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(ws))/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkWindowsInsertSize measures what a windows insert costs the
// process in CPU per row, background merges included, by insert size: the
// same 720,000 windows (1,000 devices × 2 metrics, 10 s and 1 min) in
// inserts of each size, then waiting until the process is quiet. On chDB
// every insert is a new part, whose files (and merges) cost a fixed share.
//
//	go test ./storage -run '^$' -bench WindowsInsertSize -benchtime 1x
func BenchmarkWindowsInsertSize(b *testing.B) {
	const devices, total = 1000, 720_000
	var all []Window
	for w := 0; len(all) < total; w++ {
		start := t0.Add(time.Duration(w) * 10 * time.Second)
		for d := range devices {
			dev := fmt.Sprintf("dev-%04d", d)
			all = append(all, win(dev, "temperature", 10*time.Second, start, 20+float64(d%7), 21, 22),
				win(dev, "humidity", 10*time.Second, start, 40+float64(d%5), 41))
			if w%6 == 5 {
				all = append(all, win(dev, "temperature", time.Minute, start.Add(-50*time.Second), 20+float64(d%7), 21),
					win(dev, "humidity", time.Minute, start.Add(-50*time.Second), 40+float64(d%5), 41))
			}
		}
	}
	for _, per := range []int{20_000, 45_000, 90_000, 180_000} {
		b.Run(fmt.Sprint("rows=", per), func(b *testing.B) {
			s := openT(b, chdbKind().cfg(b))
			ctx := ctxT(b)
			var cpu time.Duration
			for i := 0; b.Loop(); i++ {
				for j := range all {
					all[j].Version = uint64(i + 1)
				}
				c0 := testcpu.Time(b)
				for k := 0; k < len(all); k += per {
					if err := s.WriteBatch(ctx, all[k:min(k+per, len(all))], nil); err != nil {
						b.Fatal(err)
					}
				}
				if !testcpu.WaitQuiet(b, 2*time.Minute) { // chDB's merges are done
					b.Fatal("chDB did not go quiet within 2 minutes")
				}
				cpu += testcpu.Time(b) - c0
			}
			b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(b.N*len(all)), "cpu-µs/row")
		})
	}
}
