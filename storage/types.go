package storage

import "time"

// Window is one stored window result: the aggregate of one device's metric
// over one tumbling event-time window. Re-emitting a window with a higher
// Version replaces the earlier row (ReplacingMergeTree).
type Window struct {
	Device  string
	Metric  string
	Size    time.Duration // window length, whole seconds
	Start   time.Time     // UTC, aligned to Size
	Count   uint64
	Sum     float64
	Min     float64
	Max     float64
	First   float64 // value of the earliest reading by event time
	Last    float64 // value of the latest reading by event time
	FirstAt time.Time
	LastAt  time.Time
	Version uint64
}

// Reading is one raw numeric reading, kept for drill-down with a retention TTL.
type Reading struct {
	Device string
	Metric string
	Time   time.Time // event time, millisecond precision is stored
	Value  float64
}

// Aggregate names what a series or summary computes from stored windows.
type Aggregate string

const (
	Mean  Aggregate = "mean"
	Max   Aggregate = "max"
	Min   Aggregate = "min"
	Count Aggregate = "count"
	Sum   Aggregate = "sum"
)

// SeriesQuery asks for one device's metric re-aggregated into steps.
type SeriesQuery struct {
	Device    string
	Metric    string
	Aggregate Aggregate
	From, To  time.Time     // [From, To)
	Step      time.Duration // bucket width; must be a multiple of a stored window size
	// WindowSize picks the stored window size to read; zero picks the
	// coarsest configured size that divides Step.
	WindowSize time.Duration
}

// Point is one bucket of a series. Count is the number of readings behind it.
type Point struct {
	Time  time.Time
	Value float64
	Count uint64
}

// WindowsQuery selects stored windows. Zero fields do not filter: an empty
// Device or Metric means all (so the empty string itself cannot be selected),
// Size 0 all sizes, a zero From or To an open end.
type WindowsQuery struct {
	Device, Metric string
	Size           time.Duration // whole seconds, or 0
	From, To       time.Time     // window start in [From, To)
	Limit          int           // at most this many windows (the first in order); 0 = all
}
