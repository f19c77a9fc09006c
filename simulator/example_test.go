package simulator_test

import (
	"fmt"
	"os"
	"time"

	"github.com/iotpipe/iotpipe/simulator"
)

func ExampleReport_WriteTo() {
	rep := simulator.Report{
		Devices: 10, Sent: 6000, Acked: 5998, Failed: 2,
		Elapsed: 60*time.Second + 4*time.Millisecond, Rate: 99.96,
		Mean: 1234 * time.Microsecond, P50: 1100 * time.Microsecond, P90: 1900 * time.Microsecond,
		P99: 3456789 * time.Nanosecond, Max: 42 * time.Millisecond,
	}
	rep.WriteTo(os.Stdout)
	// Output:
	// devices      10
	// sent         6000
	// acked        5998 (99.97%)
	// failed       2
	// elapsed      1m0.004s
	// rate         100.0 msg/s
	// latency      mean 1.23ms  p50 1.1ms  p90 1.9ms  p99 3.46ms  max 42ms
}

// A device's readings are a function of its id, the seed and the times asked.
func ExampleSensor() {
	s := simulator.NewSensor("kitchen", 1)
	t := time.Date(2026, 6, 1, 15, 0, 0, 0, time.UTC)
	for i := range 3 {
		r := s.Next(t.Add(time.Duration(i) * time.Minute))
		fmt.Printf("%s %.2f °C %.1f %%\n", r.Time.Format("15:04"), r.Temperature, r.Humidity)
	}
	// Output:
	// 15:00 22.27 °C 25.7 %
	// 15:01 22.43 °C 24.0 %
	// 15:02 22.18 °C 24.9 %
}
