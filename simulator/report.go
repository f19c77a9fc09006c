package simulator

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Report summarises a run. Once Run returns, Sent == Acked + Failed.
type Report struct {
	Devices int
	// Sent counts publishes handed to the client; Acked those the broker
	// acknowledged (for QoS 0: those written to the connection); Failed the
	// rest, including any still unacknowledged when the run stopped.
	Sent, Acked, Failed uint64
	// Disconnects counts devices whose connection dropped during the run;
	// such a device stops publishing.
	Disconnects int
	Elapsed     time.Duration // from the first publish to the last completion
	Rate        float64       // acknowledged messages per second over Elapsed
	// Latency from the publish call to its acknowledgement, over acked
	// messages. Percentiles are within 0.4% of the exact value.
	Mean, P50, P90, P99, Max time.Duration
}

// WriteTo writes the human summary of r, one item per line.
func (r Report) WriteTo(w io.Writer) (int64, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "devices      %d\n", r.Devices)
	fmt.Fprintf(&b, "sent         %d\n", r.Sent)
	fmt.Fprintf(&b, "acked        %d", r.Acked)
	if r.Sent > 0 {
		fmt.Fprintf(&b, " (%.2f%%)", 100*float64(r.Acked)/float64(r.Sent))
	}
	fmt.Fprintf(&b, "\nfailed       %d\n", r.Failed)
	if r.Disconnects > 0 {
		fmt.Fprintf(&b, "disconnects  %d\n", r.Disconnects)
	}
	fmt.Fprintf(&b, "elapsed      %s\n", r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(&b, "rate         %.1f msg/s\n", r.Rate)
	fmt.Fprintf(&b, "latency      mean %s  p50 %s  p90 %s  p99 %s  max %s\n",
		roundDur(r.Mean), roundDur(r.P50), roundDur(r.P90), roundDur(r.P99), roundDur(r.Max))
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

func (r Report) String() string {
	var b strings.Builder
	r.WriteTo(&b)
	return b.String()
}

// roundDur keeps three significant digits or so, enough for a summary.
func roundDur(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	case d >= time.Microsecond:
		return d.Round(10 * time.Nanosecond)
	}
	return d
}
