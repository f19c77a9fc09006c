package registry_test

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/internal/testkafka"
	"github.com/iotpipe/iotpipe/registry"
)

// A new device has version 1, empty, as in Cloud IoT Core; writes number on
// from there; the history keeps the last MaxConfigVersions, newest first.
func TestConfigVersionsAndHistory(t *testing.T) {
	seeds, topic := setup(t)
	r := start(t, seeds, topic)
	ctx := ctxT(t)
	dev, _, err := r.Create(ctx, registry.Spec{ID: "cfg-1"})
	if err != nil {
		t.Fatal(err)
	}
	if c := dev.DeviceConfig(); c.Version != 1 || len(c.Data) != 0 || !c.CloudUpdateTime.Equal(dev.CreatedAt) {
		t.Fatalf("initial config %+v, want version 1, empty, at creation", c)
	}
	const n = 12
	for i := range n {
		c, err := r.SetConfig(ctx, "cfg-1", []byte(fmt.Sprintf("data-%d", i)), 0)
		if err != nil || c.Version != int64(i+2) {
			t.Fatalf("SetConfig #%d: %+v %v, want version %d", i, c, err, i+2)
		}
	}
	got, _ := r.Get("cfg-1")
	vs := got.ConfigVersions()
	if len(vs) != registry.MaxConfigVersions {
		t.Fatalf("%d versions kept, want %d", len(vs), registry.MaxConfigVersions)
	}
	for i, v := range vs {
		want := int64(n + 1 - i)
		if v.Version != want || string(v.Data) != fmt.Sprintf("data-%d", want-2) {
			t.Errorf("versions[%d] = %d %q, want %d newest first", i, v.Version, v.Data, want)
		}
	}
	if c := got.DeviceConfig(); c.Version != n+1 {
		t.Errorf("latest %d, want %d", c.Version, n+1)
	}
	if _, err := r.SetConfig(ctx, "nobody", nil, 0); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("SetConfig(unknown): %v, want ErrNotFound", err)
	}
	if _, err := r.SetConfig(ctx, "cfg-1", make([]byte, registry.MaxConfigBytes+1), 0); !errors.Is(err, registry.ErrConfigTooLarge) {
		t.Errorf("SetConfig(64 KiB + 1): %v, want ErrConfigTooLarge", err)
	}
	if _, err := r.SetConfig(ctx, "cfg-1", make([]byte, registry.MaxConfigBytes), 0); err != nil {
		t.Errorf("SetConfig(64 KiB): %v", err)
	}
}

// Large configs: the history keeps the latest always and older versions only
// while the total stays within its byte budget.
func TestConfigHistoryByteBudget(t *testing.T) {
	seeds, topic := setup(t)
	r := start(t, seeds, topic)
	ctx := ctxT(t)
	if _, _, err := r.Create(ctx, registry.Spec{ID: "cfg-big"}); err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		if _, err := r.SetConfig(ctx, "cfg-big", bytes.Repeat([]byte{byte(i)}, registry.MaxConfigBytes), 0); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := r.Get("cfg-big")
	vs := got.ConfigVersions()
	total := 0
	for _, v := range vs {
		total += len(v.Data)
	}
	if len(vs) < 2 || len(vs) >= 8 || total > 256<<10 || vs[0].Version != 9 {
		t.Fatalf("kept %d versions (newest %d) of %d bytes; want the newest 9 and at most 256 KiB", len(vs), vs[0].Version, total)
	}
}

// version_to_update: a stale or future expected version is refused with
// ErrConfigVersionMismatch, the current one wins.
func TestConfigCompareAndSet(t *testing.T) {
	seeds, topic := setup(t)
	r := start(t, seeds, topic)
	ctx := ctxT(t)
	if _, _, err := r.Create(ctx, registry.Spec{ID: "cas-1"}); err != nil {
		t.Fatal(err)
	}
	if c, err := r.SetConfig(ctx, "cas-1", []byte("a"), 1); err != nil || c.Version != 2 {
		t.Fatalf("SetConfig(expect 1): %+v %v", c, err)
	}
	for _, stale := range []int64{1, 3} {
		if _, err := r.SetConfig(ctx, "cas-1", []byte("b"), stale); !errors.Is(err, registry.ErrConfigVersionMismatch) {
			t.Errorf("SetConfig(expect %d) at version 2: %v, want ErrConfigVersionMismatch", stale, err)
		}
	}
	if _, err := r.SetConfig(ctx, "cas-1", []byte("b"), -1); !errors.Is(err, registry.ErrInvalidConfig) {
		t.Errorf("SetConfig(expect -1): %v, want ErrInvalidConfig", err)
	}
	if d, _ := r.Get("cas-1"); d.DeviceConfig().Version != 2 || string(d.DeviceConfig().Data) != "a" {
		t.Errorf("after refused writes: %+v", d.DeviceConfig())
	}
}

// Two instances race compare-and-set writes for the same expected version:
// exactly one wins each round, both instances and a freshly started third one
// agree on the result.
func TestConfigCompareAndSetAcrossInstances(t *testing.T) {
	seeds, topic := setup(t)
	a := start(t, seeds, topic)
	b := start(t, seeds, topic)
	ctx := ctxT(t)
	if _, _, err := a.Create(ctx, registry.Spec{ID: "cas-x"}); err != nil {
		t.Fatal(err)
	}
	testkafka.Eventually(t, waitFor, "b sees the device", func() bool { _, err := b.Get("cas-x"); return err == nil })
	for round := range 5 {
		expect := int64(round + 1)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, r := range []*registry.Registry{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = r.SetConfig(ctx, "cas-x", []byte(fmt.Sprintf("round %d from %d", round, i)), expect)
			}()
		}
		wg.Wait()
		won := -1
		for i, err := range errs {
			switch {
			case err == nil && won < 0:
				won = i
			case err == nil:
				t.Fatalf("round %d: both writers won", round)
			case !errors.Is(err, registry.ErrConfigVersionMismatch):
				t.Fatalf("round %d: writer %d: %v", round, i, err)
			}
		}
		if won < 0 {
			t.Fatalf("round %d: nobody won: %v", round, errs)
		}
		want := fmt.Sprintf("round %d from %d", round, won)
		for name, r := range map[string]*registry.Registry{"a": a, "b": b} {
			testkafka.Eventually(t, waitFor, "instance "+name+" agrees", func() bool {
				d, _ := r.Get("cas-x")
				c := d.DeviceConfig()
				return c.Version == expect+1 && string(c.Data) == want
			})
		}
	}
	c := start(t, seeds, topic)
	d, _ := a.Get("cas-x")
	testkafka.Eventually(t, waitFor, "a new instance agrees", func() bool {
		e, _ := c.Get("cas-x")
		return string(e.DeviceConfig().Data) == string(d.DeviceConfig().Data) && e.DeviceConfig().Version == d.DeviceConfig().Version
	})
}

// Concurrent admin writes through two instances are no longer lost: both
// credentials added at the same time end up on the device.
func TestConcurrentUpdatesBothApplied(t *testing.T) {
	seeds, topic := setup(t)
	a := start(t, seeds, topic)
	b := start(t, seeds, topic)
	ctx := ctxT(t)
	if _, _, err := a.Create(ctx, registry.Spec{ID: "both-1"}); err != nil {
		t.Fatal(err)
	}
	testkafka.Eventually(t, waitFor, "b sees the device", func() bool { _, err := b.Get("both-1"); return err == nil })
	var wg sync.WaitGroup
	for i, r := range []*registry.Registry{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.SetMetadata(ctx, "both-1", "", nil); err != nil {
				t.Errorf("SetMetadata: %v", err)
			}
			if _, err := r.SetConfig(ctx, "both-1", []byte{byte(i)}, 0); err != nil {
				t.Errorf("SetConfig: %v", err)
			}
		}()
	}
	wg.Wait()
	for _, r := range []*registry.Registry{a, b} {
		testkafka.Eventually(t, waitFor, "both unconditional writes applied", func() bool {
			d, _ := r.Get("both-1")
			return d.DeviceConfig().Version == 3 && len(d.ConfigVersions()) == 3
		})
	}
}

// A device's PUBACK: the first ack of a version is recorded (without
// touching UpdatedAt), a repeated one and one for an unknown version write
// nothing.
func TestAckConfig(t *testing.T) {
	seeds, topic := setup(t)
	r := start(t, seeds, topic)
	ctx := ctxT(t)
	dev, _, err := r.Create(ctx, registry.Spec{ID: "ack-1"})
	if err != nil {
		t.Fatal(err)
	}
	t1 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := r.AckConfig(ctx, "ack-1", 1, t1); err != nil {
		t.Fatal(err)
	}
	d, _ := r.Get("ack-1")
	if c := d.DeviceConfig(); c.Version != 1 || !c.DeviceAckTime.Equal(t1) || !d.LastConfigAckTime.Equal(t1) || !d.UpdatedAt.Equal(dev.UpdatedAt) {
		t.Fatalf("after ack of the implicit version 1: %+v, device ack %v updated %v", c, d.LastConfigAckTime, d.UpdatedAt)
	}
	if err := r.AckConfig(ctx, "ack-1", 1, t1.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := r.AckConfig(ctx, "ack-1", 7, t1.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	d, _ = r.Get("ack-1")
	if !d.DeviceConfig().DeviceAckTime.Equal(t1) || !d.LastConfigAckTime.Equal(t1) {
		t.Errorf("a repeated or unknown ack changed the record: %+v %v", d.DeviceConfig(), d.LastConfigAckTime)
	}
	c2, err := r.SetConfig(ctx, "ack-1", []byte("x"), 0)
	if err != nil || !c2.DeviceAckTime.IsZero() {
		t.Fatalf("SetConfig: %+v %v", c2, err)
	}
	if err := r.AckConfig(ctx, "ack-1", 2, t1.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	d, _ = r.Get("ack-1")
	if !d.DeviceConfig().DeviceAckTime.Equal(t1.Add(2*time.Hour)) || !d.LastConfigAckTime.Equal(t1.Add(2*time.Hour)) {
		t.Errorf("ack of version 2: %+v %v", d.DeviceConfig(), d.LastConfigAckTime)
	}
	if err := r.AckConfig(ctx, "nobody", 1, t1); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("AckConfig(unknown device): %v", err)
	}
}
