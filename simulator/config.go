package simulator

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// Device is one simulated device and the credentials it connects with.
type Device struct {
	ID    string
	Token string
}

// Config describes a simulation run. The zero value of each optional field is
// documented beside it.
type Config struct {
	Broker string // MQTT broker as host:port
	// TLS, when set, connects over TLS (MQTT over TLS, e.g. the broker's
	// :8883) with this client configuration (RootCAs for a private CA);
	// nil connects over plain TCP.
	TLS     *tls.Config
	Devices []Device
	// Rate is the whole fleet's target in messages per second, spread evenly
	// over the devices; 0 publishes as fast as acknowledgements allow.
	Rate float64
	// Duration stops publishing after this long; 0 runs until Messages are
	// sent or ctx is cancelled.
	Duration time.Duration
	// Messages stops after this many messages in total, split as evenly as
	// possible over the devices; 0 means no limit.
	Messages int
	// QoS is the MQTT quality of service, 0 or 1. The zero value is QoS 0
	// (Go cannot tell "unset" from 0); `iotpipe simulate` defaults it to 1.
	QoS byte
	// MaxInflight bounds unacknowledged publishes per connection; 0 means
	// DefaultMaxInflight.
	MaxInflight int
	Seed        int64 // makes payloads reproducible, see Sensor
	// Progress, if set, receives a one-line summary every ProgressEvery
	// (0 means one second).
	Progress      io.Writer
	ProgressEvery time.Duration
	Logger        zerolog.Logger
}

// DefaultMaxInflight is used when Config.MaxInflight is 0: deep enough that
// a millisecond-scale round trip does not cap a connection at ~1000 msg/s.
const DefaultMaxInflight = 32

// maxInflightLimit is MQTT's packet identifier space.
const maxInflightLimit = math.MaxUint16

// validate reports every impossible setting at once, before any connection.
func (c *Config) validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if _, port, err := net.SplitHostPort(c.Broker); err != nil || port == "" {
		bad("broker %q must be host:port", c.Broker)
	}
	if len(c.Devices) == 0 {
		bad("no devices")
	}
	seen := make(map[string]bool, len(c.Devices))
	for i, d := range c.Devices {
		switch {
		case d.ID == "":
			bad("device %d has an empty id", i)
		case strings.ContainsAny(d.ID, "/+#\x00"):
			// The id is a topic level and the MQTT client id.
			bad("device id %q must not contain '/', '+', '#' or NUL", d.ID)
		case seen[d.ID]:
			bad("device id %q appears twice", d.ID)
		}
		seen[d.ID] = true
		if d.Token == "" {
			bad("device %q has an empty token", d.ID)
		}
	}
	if math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) || c.Rate < 0 {
		bad("rate %v must be a finite number ≥ 0", c.Rate)
	}
	if c.Duration < 0 {
		bad("duration %v must be ≥ 0", c.Duration)
	}
	if c.Messages < 0 {
		bad("messages %d must be ≥ 0", c.Messages)
	}
	if c.QoS > 1 {
		bad("qos %d must be 0 or 1", c.QoS)
	}
	if c.MaxInflight < 0 || c.MaxInflight > maxInflightLimit {
		bad("max inflight %d must be between 0 and %d", c.MaxInflight, maxInflightLimit)
	}
	if c.ProgressEvery < 0 {
		bad("progress interval %v must be ≥ 0", c.ProgressEvery)
	}
	if len(errs) > 0 {
		return fmt.Errorf("simulator: invalid config: %w", errors.Join(errs...))
	}
	return nil
}

func (c *Config) ensureDefaults() {
	if c.MaxInflight == 0 {
		c.MaxInflight = DefaultMaxInflight
	}
	if c.ProgressEvery == 0 {
		c.ProgressEvery = time.Second
	}
}
