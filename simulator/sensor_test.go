package simulator

import (
	"encoding/json"
	"fmt"
	"math"
	"testing"
	"time"
)

var day0 = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)

func TestSensorDeterministic(t *testing.T) {
	run := func(id string, seed int64) []Reading {
		s := NewSensor(id, seed)
		out := make([]Reading, 500)
		for i := range out {
			out[i] = s.Next(day0.Add(time.Duration(i) * 7 * time.Second))
		}
		return out
	}
	a := run("dev-1", 42)
	if b := run("dev-1", 42); fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatal("same id and seed gave different readings")
	}
	if b := run("dev-1", 43); fmt.Sprint(a) == fmt.Sprint(b) {
		t.Error("another seed gave the same readings")
	}
	if b := run("dev-2", 42); fmt.Sprint(a) == fmt.Sprint(b) {
		t.Error("another device gave the same readings")
	}
}

func TestSensorRangeAndRounding(t *testing.T) {
	for d := range 200 {
		s := NewSensor(fmt.Sprintf("dev-%d", d), 1)
		for i := range 2 * 24 * 60 { // two days, one a minute
			r := s.Next(day0.Add(time.Duration(i) * time.Minute))
			if r.Temperature < 5 || r.Temperature > 45 {
				t.Fatalf("device %d minute %d: temperature %v out of a room's range", d, i, r.Temperature)
			}
			if r.Humidity < 0 || r.Humidity > 100 {
				t.Fatalf("device %d minute %d: humidity %v outside [0,100]", d, i, r.Humidity)
			}
			if r.Temperature != math.Round(r.Temperature*100)/100 || r.Humidity != math.Round(r.Humidity*10)/10 {
				t.Fatalf("reading %+v not rounded to 0.01 °C / 0.1 %%", r)
			}
		}
	}
}

// Consecutive one-second readings move little (spikes are rare), and the
// afternoon is warmer and drier than the night.
func TestSensorSmoothAndDiurnal(t *testing.T) {
	const devices = 20
	var jumps, steps int
	var warmer, drier float64
	for d := range devices {
		s := NewSensor(fmt.Sprintf("dev-%d", d), 7)
		var prev Reading
		var afternoon, night [2]float64
		for i := range 24 * 3600 {
			r := s.Next(day0.Add(time.Duration(i) * time.Second))
			if i > 0 {
				steps++
				if math.Abs(r.Temperature-prev.Temperature) > 0.5 || math.Abs(r.Humidity-prev.Humidity) > 2 {
					jumps++
				}
			}
			prev = r
			switch r.Time.Hour() {
			case 15:
				afternoon[0] += r.Temperature / 3600
				afternoon[1] += r.Humidity / 3600
			case 3:
				night[0] += r.Temperature / 3600
				night[1] += r.Humidity / 3600
			}
		}
		warmer += (afternoon[0] - night[0]) / devices
		drier += (night[1] - afternoon[1]) / devices
	}
	if frac := float64(jumps) / float64(steps); frac > 0.002 || jumps == 0 {
		t.Errorf("%d of %d one-second steps jumped (%.4f%%); want a few spikes, not noise", jumps, steps, 100*frac)
	}
	if warmer < 2 {
		t.Errorf("15:00 is on average only %.2f °C warmer than 03:00", warmer)
	}
	if drier < 5 {
		t.Errorf("15:00 is on average only %.2f %% drier than 03:00", drier)
	}
}

func TestPayloadIsJSON(t *testing.T) {
	r := Reading{Time: time.UnixMilli(1712000000123), Temperature: 21.37, Humidity: 48.2}
	b := appendPayload(nil, r)
	if want := `{"ts":1712000000123,"temperature":21.37,"humidity":48.2}`; string(b) != want {
		t.Fatalf("payload %s, want %s", b, want)
	}
	var v struct {
		TS          int64   `json:"ts"`
		Temperature float64 `json:"temperature"`
		Humidity    float64 `json:"humidity"`
	}
	r.Temperature, r.Humidity = -3, 100
	if err := json.Unmarshal(appendPayload(nil, r), &v); err != nil || v.Temperature != -3 || v.Humidity != 100 {
		t.Fatalf("payload %s: %+v, %v", appendPayload(nil, r), v, err)
	}
}

var sink []byte

func BenchmarkSensor(b *testing.B) {
	b.Run("Next", func(b *testing.B) {
		s := NewSensor("dev-1", 1)
		var r Reading
		for i := 0; b.Loop(); i++ {
			r = s.Next(day0.Add(time.Duration(i) * time.Second))
		}
		sink = appendPayload(sink[:0], r)
	})
	b.Run("NextAndPayload", func(b *testing.B) {
		s := NewSensor("dev-1", 1)
		buf := make([]byte, 0, 64)
		for i := 0; b.Loop(); i++ {
			buf = appendPayload(buf[:0], s.Next(day0.Add(time.Duration(i)*time.Second)))
		}
		b.SetBytes(int64(len(buf)))
		sink = buf
	})
}
