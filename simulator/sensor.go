package simulator

import (
	"hash/fnv"
	"math"
	"math/rand/v2"
	"strconv"
	"time"
)

// Reading is one sample of a simulated device.
type Reading struct {
	Time        time.Time
	Temperature float64 // °C, rounded to 0.01
	Humidity    float64 // % relative humidity in [0, 100], rounded to 0.1
}

// Model constants. The walk is an Ornstein-Uhlenbeck process (mean-reverting
// noise) stepped exactly for the elapsed time, so its statistics do not depend
// on the publish rate: one reading a second or one an hour look equally real.
const (
	walkTau       = 15 * 60.0 // seconds for the walk to forget ~63% of its state
	tempWalkSigma = 0.7       // °C, stationary standard deviation of the walk
	tempWalkBound = 2.0       // °C, the walk is clamped to ±bound
	humWalkSigma  = 3.0       // %
	humWalkBound  = 8.0       // %
	spikeProb     = 1.0 / 5000
)

// Sensor generates the readings of one device: a per-device baseline, a daily
// cycle peaking in the afternoon (humidity moves against temperature), a
// bounded random walk, and a rare one-reading spike.
//
// A Sensor is a pure function of (device id, seed, the sequence of times passed
// to Next): the same inputs always give the same readings, which is what lets
// tests predict a simulated fleet's payloads. It is not safe for concurrent use.
type Sensor struct {
	rng               *rand.Rand
	baseTemp, baseHum float64
	ampTemp, ampHum   float64
	peakHour          float64
	walkTemp, walkHum float64
	last              time.Time
	started           bool
}

// NewSensor returns the sensor of deviceID for the given seed.
func NewSensor(deviceID string, seed int64) *Sensor {
	h := fnv.New64a()
	h.Write([]byte(deviceID))
	// PCG's output for a given state is fixed by the math/rand/v2 API contract.
	rng := rand.New(rand.NewPCG(uint64(seed), h.Sum64()))
	s := &Sensor{rng: rng}
	s.baseTemp = 18 + 8*rng.Float64() // a room between 18 and 26 °C
	s.baseHum = 35 + 25*rng.Float64()
	s.ampTemp = 1.5 + 2.5*rng.Float64() // daily swing of ±1.5..4 °C
	s.ampHum = 4 + 8*rng.Float64()
	s.peakHour = 14 + 3*rng.Float64() // warmest between 14:00 and 17:00
	s.walkTemp = clamp(tempWalkSigma*rng.NormFloat64(), -tempWalkBound, tempWalkBound)
	s.walkHum = clamp(humWalkSigma*rng.NormFloat64(), -humWalkBound, humWalkBound)
	return s
}

// Next returns the reading at t, advancing the walk by the time since the
// previous call. Times are expected in order; a t not after the previous one
// leaves the walk where it was.
func (s *Sensor) Next(t time.Time) Reading {
	if s.started {
		if dt := t.Sub(s.last).Seconds(); dt > 0 {
			a := math.Exp(-dt / walkTau)
			k := math.Sqrt(1 - a*a)
			s.walkTemp = clamp(a*s.walkTemp+k*tempWalkSigma*s.rng.NormFloat64(), -tempWalkBound, tempWalkBound)
			s.walkHum = clamp(a*s.walkHum+k*humWalkSigma*s.rng.NormFloat64(), -humWalkBound, humWalkBound)
		}
	}
	s.started, s.last = true, t

	hour := float64(t.Hour()) + float64(t.Minute())/60 + float64(t.Second())/3600
	day := math.Cos(2 * math.Pi * (hour - s.peakHour) / 24)
	temp := s.baseTemp + s.ampTemp*day + s.walkTemp
	hum := s.baseHum - s.ampHum*day + s.walkHum
	// Always draw, so whether a spike happens never shifts the stream.
	if u, v := s.rng.Float64(), s.rng.Float64(); u < spikeProb {
		temp += math.Copysign(4+6*v, v-0.5) // a heater, a sunbeam, a door
		hum += math.Copysign(10+10*v, 0.5-v)
	}
	return Reading{
		Time:        t,
		Temperature: math.Round(temp*100) / 100,
		Humidity:    clamp(math.Round(hum*10)/10, 0, 100),
	}
}

func clamp(x, lo, hi float64) float64 { return min(max(x, lo), hi) }

// appendPayload appends r as the JSON object devices publish, e.g.
// {"ts":1712000000000,"temperature":21.37,"humidity":48.2}. Written by hand
// because it is on the hot path and the shape is fixed.
func appendPayload(b []byte, r Reading) []byte {
	b = append(b, `{"ts":`...)
	b = strconv.AppendInt(b, r.Time.UnixMilli(), 10)
	b = append(b, `,"temperature":`...)
	b = strconv.AppendFloat(b, r.Temperature, 'f', -1, 64)
	b = append(b, `,"humidity":`...)
	b = strconv.AppendFloat(b, r.Humidity, 'f', -1, 64)
	return append(b, '}')
}
