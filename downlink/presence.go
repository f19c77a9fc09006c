package downlink

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Presence is what this instance knows of a device's connection.
type Presence struct {
	Connected bool
	// Instance holds the connection when Connected.
	Instance         string
	LastConnected    time.Time
	LastDisconnected time.Time
	// LastHeartbeat (MQTT PINGREQ) and LastEvent (PUBLISH) are written at
	// most once per ActivityInterval per device, so they may lag that much.
	LastHeartbeat time.Time
	LastEvent     time.Time
}

// Presence returns what is known of device; the zero Presence if nothing.
func (h *Hub) Presence(device string) Presence {
	h.mu.Lock()
	defer h.mu.Unlock()
	rec, ok := h.presence[device]
	if !ok {
		return Presence{}
	}
	p := Presence{Instance: rec.Instance, LastConnected: rec.LastConnected, LastDisconnected: rec.LastDisconnected,
		LastHeartbeat: rec.LastHeartbeat, LastEvent: rec.LastEvent}
	if rec.Connected {
		if h.aliveLocked(rec) {
			p.Connected = true
		} else if p.LastDisconnected.Before(p.LastConnected) {
			// The instance died holding the connection: its last sign of
			// life is the best known disconnection time.
			// (Not before the connection: the last heartbeat may predate it.)
			p.LastDisconnected = later(later(h.instances[rec.Instance], rec.written), rec.LastConnected)
		}
	}
	if !p.Connected {
		p.Instance = ""
	}
	return p
}

// aliveLocked reports whether rec's instance showed life within the lease:
// its heartbeat or the record itself (which covers the first moments after
// an instance starts, before its heartbeat is followed).
func (h *Hub) aliveLocked(rec record) bool {
	if rec.Instance == h.cfg.Instance {
		return true // this instance is alive while it runs
	}
	last := later(h.instances[rec.Instance], rec.written)
	return h.now().Sub(last) <= h.cfg.Lease
}

func (h *Hub) applyPresence(r *kgo.Record) {
	if rec, ok := h.applyPresenceLocked(r); ok {
		h.writeDevice(string(r.Key), rec, h.now())
	}
}

// applyPresenceLocked applies r; it returns this instance's record of the
// device to write again (ok) when r wrongly said the device left.
func (h *Hub) applyPresenceLocked(r *kgo.Record) (reassert record, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.applied[r.Partition] = r.Offset + 1
	key := string(r.Key)
	if inst, ok := strings.CutPrefix(key, instanceKeyPrefix); ok {
		if r.Value == nil {
			delete(h.instances, inst)
			return record{}, false
		}
		if ms, err := strconv.ParseInt(string(r.Value), 10, 64); err == nil {
			h.instances[inst] = time.UnixMilli(ms)
		}
		return record{}, false
	}
	if r.Value == nil {
		delete(h.presence, key)
		return record{}, false
	}
	var rec record
	if err := json.Unmarshal(r.Value, &rec); err != nil {
		h.log.Warn().Err(err).Str("device", key).Msg("bad presence record; ignored")
		return record{}, false
	}
	rec.written = r.Timestamp
	if cur, ok := h.presence[key]; ok && !rec.Connected && cur.Connected && cur.Instance != rec.Instance && h.aliveLocked(cur) {
		// The device moved: it connected to cur.Instance, and its old
		// instance noticed the old connection end only after that record.
		// Every instance applies the same order, so all keep cur. The one
		// holding the device writes its record again, so that the topic's
		// last record for the device (all compaction keeps) is true too.
		if l := h.local[key]; l != nil && cur.Instance == h.cfg.Instance {
			return l.rec, true
		}
		return record{}, false
	}
	h.presence[key] = rec
	return record{}, false
}

// DeviceConnected records that a client of device connected here. It never
// blocks (see tryProduce); the broker calls it from MQTT goroutines.
func (h *Hub) DeviceConnected(device string) {
	now := h.now()
	h.mu.Lock()
	l, ok := h.local[device]
	if !ok {
		l = &local{rec: h.presence[device]}
		h.local[device] = l
	}
	l.clients++
	first := l.clients == 1
	if first {
		l.rec.Instance, l.rec.Connected, l.rec.LastConnected = h.cfg.Instance, true, now
	}
	rec := l.rec
	if first {
		l.lastWritten = now
		h.presence[device] = rec // our own view is current at once
	}
	h.mu.Unlock()
	if first {
		h.writeDevice(device, rec, now)
	}
}

// DeviceDisconnected records that a client of device left this instance.
func (h *Hub) DeviceDisconnected(device string) {
	now := h.now()
	h.mu.Lock()
	l, ok := h.local[device]
	if !ok {
		h.mu.Unlock()
		return
	}
	l.clients--
	if l.clients > 0 {
		h.mu.Unlock()
		return
	}
	delete(h.local, device)
	cur := h.presence[device]
	if cur.Connected && cur.Instance != h.cfg.Instance {
		h.mu.Unlock()
		return // the device already connected elsewhere: that record is the truth
	}
	rec := l.rec
	rec.Connected, rec.LastDisconnected = false, now
	h.presence[device] = rec
	h.mu.Unlock()
	h.writeDevice(device, rec, now)
}

// DevicePinged records an MQTT PINGREQ; DevicePublished a PUBLISH. Both are
// written at most once per ActivityInterval per device.
func (h *Hub) DevicePinged(device string)    { h.activity(device, true) }
func (h *Hub) DevicePublished(device string) { h.activity(device, false) }

func (h *Hub) activity(device string, ping bool) {
	now := h.now()
	h.mu.Lock()
	l, ok := h.local[device]
	if !ok {
		h.mu.Unlock()
		return
	}
	if ping {
		l.rec.LastHeartbeat = now
	} else {
		l.rec.LastEvent = now
	}
	write := now.Sub(l.lastWritten) >= h.cfg.ActivityInterval
	rec := l.rec
	if write {
		l.lastWritten = now
		h.presence[device] = rec
	}
	h.mu.Unlock()
	if write {
		h.writeDevice(device, rec, now)
	}
}

func (h *Hub) writeDevice(device string, rec record, now time.Time) {
	v, err := json.Marshal(rec)
	if err != nil {
		h.log.Error().Err(err).Msg("encode presence")
		return
	}
	h.tryProduce(&kgo.Record{Topic: h.cfg.PresenceTopic, Key: []byte(device), Value: v, Timestamp: now})
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
