package registry

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// Device configuration, as Cloud IoT Core's modifyCloudToDeviceConfig had it:
// an opaque blob with a version the server assigns, kept in the device's
// record (so the registry topic is its source of truth) together with a short
// history.
//
// A device never given a config has version 1 with empty data, updated at
// its creation: Cloud IoT Core gave every device version 1 at creation
// ("always greater than 0 after device creation") and the first
// modifyCloudToDeviceConfig made version 2. A device subscribing to its config
// topic therefore always gets a message, possibly empty (DeviceConfig).

// Config limits.
const (
	// MaxConfigBytes is the largest config, Cloud IoT Core's limit.
	MaxConfigBytes = 64 << 10
	// MaxConfigVersions is how many versions the history keeps.
	MaxConfigVersions = 10
	// maxConfigHistoryBytes bounds the data the history holds in all, so a
	// device record stays well below Kafka's default 1 MB record limit
	// (the JSON encoding adds a third) and a fleet's registry fits in
	// memory: the latest version is always kept, older ones only while the
	// total fits.
	maxConfigHistoryBytes = 256 << 10
)

// ConfigVersion is one version of a device's config.
type ConfigVersion struct {
	Version         int64     `json:"version"`
	Data            []byte    `json:"data,omitempty"`
	CloudUpdateTime time.Time `json:"cloud_update_time"`
	// DeviceAckTime is when a device first acknowledged (MQTT PUBACK) this
	// version; zero if none did.
	DeviceAckTime time.Time `json:"device_ack_time,omitzero"`
}

// DeviceConfig returns the device's latest config (version 1, empty, at
// creation if it was never set).
func (d *Device) DeviceConfig() ConfigVersion {
	if len(d.Configs) == 0 {
		return ConfigVersion{Version: 1, CloudUpdateTime: d.CreatedAt}
	}
	c := d.Configs[len(d.Configs)-1]
	c.Data = slices.Clone(c.Data)
	return c
}

// ConfigVersions returns the kept config versions, newest first.
func (d *Device) ConfigVersions() []ConfigVersion {
	if len(d.Configs) == 0 {
		return []ConfigVersion{d.DeviceConfig()}
	}
	out := make([]ConfigVersion, len(d.Configs))
	for i, c := range d.Configs {
		c.Data = slices.Clone(c.Data)
		out[len(out)-1-i] = c
	}
	return out
}

// setConfig makes data the next version if the current version is
// expected (0: any) and trims the history. It is the pure step of
// SetConfig, run again on each retry.
func (d *Device) setConfig(data []byte, expected int64, now time.Time) (ConfigVersion, error) {
	cur := d.DeviceConfig()
	if expected != 0 && expected != cur.Version {
		return ConfigVersion{}, fmt.Errorf("%w: device %s is at version %d, the update was for version %d",
			ErrConfigVersionMismatch, d.ID, cur.Version, expected)
	}
	next := ConfigVersion{Version: cur.Version + 1, Data: slices.Clone(data), CloudUpdateTime: now}
	if len(d.Configs) == 0 {
		d.Configs = []ConfigVersion{cur} // the implicit version 1 joins the history
	}
	d.Configs = append(d.Configs, next)
	total := 0
	keep := len(d.Configs)
	for i := len(d.Configs) - 1; i >= 0; i-- {
		total += len(d.Configs[i].Data)
		if len(d.Configs)-i > MaxConfigVersions || (i < len(d.Configs)-1 && total > maxConfigHistoryBytes) {
			break
		}
		keep = i
	}
	d.Configs = slices.Clone(d.Configs[keep:])
	return next, nil
}

// ackConfig records that the device acknowledged version at t. It reports
// false (nothing to write) if that version is no longer kept or was acked
// before: a redelivered config's PUBACK costs no registry write.
func (d *Device) ackConfig(version int64, t time.Time) bool {
	if len(d.Configs) == 0 && version == 1 {
		d.Configs = []ConfigVersion{d.DeviceConfig()}
	}
	for i := range d.Configs {
		c := &d.Configs[i]
		if c.Version != version {
			continue
		}
		if !c.DeviceAckTime.IsZero() {
			return false
		}
		c.DeviceAckTime = t
		if t.After(d.LastConfigAckTime) {
			d.LastConfigAckTime = t
		}
		return true
	}
	return false
}

// SetConfig writes a new config version for the device and returns it.
// With expectedVersion > 0 it is a compare-and-set (Cloud IoT Core's
// versionToUpdate): it fails with ErrConfigVersionMismatch unless the
// latest version is expectedVersion when the write is applied, which every
// instance decides the same way (revisions.go). Other errors: ErrNotFound,
// ErrConfigTooLarge, ErrInvalidConfig.
func (r *Registry) SetConfig(ctx context.Context, id string, data []byte, expectedVersion int64) (ConfigVersion, error) {
	if len(data) > MaxConfigBytes {
		return ConfigVersion{}, fmt.Errorf("%w: %d bytes, at most %d", ErrConfigTooLarge, len(data), MaxConfigBytes)
	}
	if expectedVersion < 0 {
		return ConfigVersion{}, fmt.Errorf("%w: version to update %d must not be negative", ErrInvalidConfig, expectedVersion)
	}
	var out ConfigVersion
	var cerr error
	err := r.update(ctx, id, func(d *Device) bool {
		out, cerr = d.setConfig(data, expectedVersion, r.now().UTC())
		return cerr == nil
	})
	if err != nil {
		return ConfigVersion{}, err
	}
	return out, cerr
}

// AckConfig records that the device acknowledged config version at t (the
// broker calls it on the device's PUBACK). It writes only the first ack of
// a version, and does not change UpdatedAt (not an admin change).
func (r *Registry) AckConfig(ctx context.Context, id string, version int64, t time.Time) error {
	return r.updateRev(ctx, id, false, func(d *Device) bool { return d.ackConfig(version, t.UTC()) })
}
