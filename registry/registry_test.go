package registry_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/internal/testkafka"
	"github.com/iotpipe/iotpipe/registry"
)

// These tests run on kfake, or on a real Kafka when IOTPIPE_KAFKA_BROKERS
// is set (see internal/testkafka and scripts/kafka.sh).

const waitFor = 30 * time.Second

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

// start makes a Registry on seeds/topic, runs it until the test ends and
// waits until it caught up.
func start(t *testing.T, seeds []string, topic string) *registry.Registry {
	t.Helper()
	return startJWT(t, seeds, topic, "")
}

func setup(t *testing.T) ([]string, string) {
	return testkafka.Seeds(t), testkafka.Prefix(t) + "registry"
}

func TestCreateGetListDelete(t *testing.T) {
	seeds, topic := setup(t)
	r := start(t, seeds, topic)
	ctx := ctxT(t)

	for _, id := range []string{"sensor-b", "sensor-a", "sensor-c"} {
		dev, token, err := r.Create(ctx, registry.Spec{ID: id})
		if err != nil {
			t.Fatalf("Create %s: %v", id, err)
		}
		if dev.ID != id || dev.CreatedAt.IsZero() || len(dev.Credentials) != 1 {
			t.Fatalf("Create %s returned %+v", id, dev)
		}
		if !strings.HasPrefix(token, registry.TokenPrefix) {
			t.Fatalf("token %q lacks prefix %q", token, registry.TokenPrefix)
		}
		if raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(token, registry.TokenPrefix)); err != nil || len(raw) != 32 {
			t.Fatalf("token body is not 32 base64url bytes: %v, %d", err, len(raw))
		}
		// Read-your-writes: visible right after Create returned.
		got, err := r.Get(id)
		if err != nil || got.ID != id || !got.CreatedAt.Equal(dev.CreatedAt) {
			t.Fatalf("Get %s = %+v, %v", id, got, err)
		}
	}
	if _, _, err := r.Create(ctx, registry.Spec{ID: "sensor-a"}); !errors.Is(err, registry.ErrExists) {
		t.Fatalf("Create existing: %v, want ErrExists", err)
	}

	var ids []string
	for _, d := range r.List() {
		ids = append(ids, d.ID)
	}
	if got := strings.Join(ids, ","); got != "sensor-a,sensor-b,sensor-c" {
		t.Fatalf("List = %s", got)
	}

	if err := r.Delete(ctx, "sensor-b"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := r.Get("sensor-b"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Get deleted: %v, want ErrNotFound", err)
	}
	if err := r.Delete(ctx, "sensor-b"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Delete twice: %v, want ErrNotFound", err)
	}
	if n := len(r.List()); n != 2 {
		t.Fatalf("List after delete has %d devices, want 2", n)
	}
	// A deleted id can be created again, with a new token.
	if _, _, err := r.Create(ctx, registry.Spec{ID: "sensor-b"}); err != nil {
		t.Fatalf("re-Create: %v", err)
	}
}

func TestGetReturnsCopy(t *testing.T) {
	seeds, topic := setup(t)
	r := start(t, seeds, topic)
	if _, _, err := r.Create(ctxT(t), registry.Spec{ID: "copy-me"}); err != nil {
		t.Fatal(err)
	}
	d, _ := r.Get("copy-me")
	d.Credentials[0].TokenSHA256[0] ^= 0xff
	d.Blocked = true
	again, _ := r.Get("copy-me")
	if again.Blocked || again.Credentials[0].TokenSHA256[0] == d.Credentials[0].TokenSHA256[0] {
		t.Fatal("changing a returned Device changed the registry")
	}
}

func TestAuthenticate(t *testing.T) {
	seeds, topic := setup(t)
	r := start(t, seeds, topic)
	ctx := ctxT(t)
	_, token, err := r.Create(ctx, registry.Spec{ID: "dev-auth"})
	if err != nil {
		t.Fatal(err)
	}
	_, other, err := r.Create(ctx, registry.Spec{ID: "dev-other"})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		id       string
		password string
		want     error
	}{
		{"ok", "dev-auth", token, nil},
		{"wrong token", "dev-auth", token[:len(token)-1] + "x", registry.ErrBadCredentials},
		{"other device's token", "dev-auth", other, registry.ErrBadCredentials},
		{"empty", "dev-auth", "", registry.ErrBadCredentials},
		{"unknown device", "dev-nobody", token, registry.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := r.Authenticate(tc.id, []byte(tc.password))
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Authenticate = %v, want %v", err, tc.want)
			}
		})
	}

	if err := r.SetBlocked(ctx, "dev-auth", true); err != nil {
		t.Fatal(err)
	}
	if err := r.Authenticate("dev-auth", []byte(token)); !errors.Is(err, registry.ErrBlocked) {
		t.Fatalf("blocked device with right token: %v, want ErrBlocked", err)
	}
	// A wrong password learns nothing about the block.
	if err := r.Authenticate("dev-auth", []byte(other)); !errors.Is(err, registry.ErrBadCredentials) {
		t.Fatalf("blocked device with wrong token: %v, want ErrBadCredentials", err)
	}
	if err := r.SetBlocked(ctx, "dev-auth", false); err != nil {
		t.Fatal(err)
	}
	if err := r.Authenticate("dev-auth", []byte(token)); err != nil {
		t.Fatalf("unblocked: %v", err)
	}
	if err := r.SetBlocked(ctx, "dev-nobody", true); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("SetBlocked unknown: %v, want ErrNotFound", err)
	}
}

func TestTwoInstancesShareRegistry(t *testing.T) {
	seeds, topic := setup(t)
	a := start(t, seeds, topic)
	b := start(t, seeds, topic)
	ctx := ctxT(t)

	_, token, err := a.Create(ctx, registry.Spec{ID: "shared-1"})
	if err != nil {
		t.Fatal(err)
	}
	testkafka.Eventually(t, waitFor, "device created on a authenticates on b", func() bool {
		return b.Authenticate("shared-1", []byte(token)) == nil
	})
	// b applied a's record, so b's own existence check now refuses it.
	if _, _, err := b.Create(ctx, registry.Spec{ID: "shared-1"}); !errors.Is(err, registry.ErrExists) {
		t.Fatalf("Create on b of a's device: %v, want ErrExists", err)
	}

	if err := b.SetBlocked(ctx, "shared-1", true); err != nil {
		t.Fatal(err)
	}
	testkafka.Eventually(t, waitFor, "block through b reaches a", func() bool {
		return errors.Is(a.Authenticate("shared-1", []byte(token)), registry.ErrBlocked)
	})
	if err := b.Delete(ctx, "shared-1"); err != nil {
		t.Fatal(err)
	}
	testkafka.Eventually(t, waitFor, "delete through b reaches a", func() bool {
		_, err := a.Get("shared-1")
		return errors.Is(err, registry.ErrNotFound)
	})
}

func TestRestartSeesAllDevices(t *testing.T) {
	seeds, topic := setup(t)
	ctx := ctxT(t)
	first, err := registry.New(registry.Config{Kafka: []kgo.Opt{kgo.SeedBrokers(seeds...)}, Topic: topic})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- first.Run(runCtx) }()
	if err := first.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	tokens := map[string]string{}
	for _, id := range []string{"keep-1", "keep-2", "gone-3", "keep-4"} {
		_, tok, err := first.Create(ctx, registry.Spec{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		tokens[id] = tok
	}
	if err := first.Delete(ctx, "gone-3"); err != nil {
		t.Fatal(err)
	}
	if err := first.SetBlocked(ctx, "keep-4", true); err != nil {
		t.Fatal(err)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	first.Close()

	// WaitReady alone (no polling) must be enough: the new instance waits
	// for the end offsets that existed when it started.
	second := start(t, seeds, topic)
	var ids []string
	for _, d := range second.List() {
		ids = append(ids, d.ID)
	}
	if got := strings.Join(ids, ","); got != "keep-1,keep-2,keep-4" {
		t.Fatalf("after restart List = %s", got)
	}
	if err := second.Authenticate("keep-2", []byte(tokens["keep-2"])); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if err := second.Authenticate("keep-4", []byte(tokens["keep-4"])); !errors.Is(err, registry.ErrBlocked) {
		t.Fatalf("after restart blocked device: %v", err)
	}
}

func TestTopicNeverHoldsToken(t *testing.T) {
	seeds, topic := setup(t)
	r := start(t, seeds, topic)
	ctx := ctxT(t)
	var tokens []string
	for _, id := range []string{"secret-1", "secret-2"} {
		_, tok, err := r.Create(ctx, registry.Spec{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, tok)
	}
	if err := r.SetBlocked(ctx, "secret-1", true); err != nil {
		t.Fatal(err)
	}

	// Read the raw log with a plain consumer, as an attacker with topic
	// read access would.
	end := endOffset(t, seeds, topic)
	cl := testkafka.Client(t, seeds, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}))
	var raw [][]byte
	for n := int64(0); n < end; {
		fs := cl.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatalf("consume: %v", err)
		}
		fs.EachRecord(func(rec *kgo.Record) {
			raw = append(raw, rec.Key, rec.Value)
			for _, h := range rec.Headers {
				raw = append(raw, []byte(h.Key), h.Value)
			}
			n = rec.Offset + 1
		})
	}
	if len(raw) == 0 {
		t.Fatal("read nothing from the topic")
	}
	all := bytes.Join(raw, nil)
	for _, tok := range tokens {
		body := strings.TrimPrefix(tok, registry.TokenPrefix)
		secret, _ := base64.RawURLEncoding.DecodeString(body)
		for _, needle := range [][]byte{[]byte(tok), []byte(body), secret, []byte(base64.StdEncoding.EncodeToString(secret))} {
			if bytes.Contains(all, needle) {
				t.Fatalf("registry topic contains token material %q", needle)
			}
		}
	}
}

func endOffset(t *testing.T, seeds []string, topic string) int64 {
	t.Helper()
	ends, err := kadm.NewClient(testkafka.Client(t, seeds)).ListEndOffsets(ctxT(t), topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		t.Fatal(err)
	}
	o, _ := ends.Lookup(topic, 0)
	return o.Offset
}

func TestInvalidIDs(t *testing.T) {
	seeds, topic := setup(t)
	r := start(t, seeds, topic)
	ctx := ctxT(t)
	tests := []struct {
		id string
		ok bool
	}{
		{"abc", true},
		{"Z12", true},
		{"a-b_c.d~e+f%g", true},
		{"a" + strings.Repeat("x", 254), true},
		{"", false},
		{"ab", false},
		{"1abc", false},
		{"-abc", false},
		{"_abc", false},
		{"a" + strings.Repeat("x", 255), false},
		{"dev/ice", false},
		{"dev#1", false},
		{"dev ice", false},
		{"dev:1", false},
		{"devé", false},
		{"dev\x00x", false},
	}
	for _, tc := range tests {
		name := tc.id
		if len(name) > 20 {
			name = name[:20] + "..."
		}
		t.Run(name, func(t *testing.T) {
			err := registry.ValidateID(tc.id)
			if tc.ok != (err == nil) {
				t.Fatalf("ValidateID(%q) = %v, ok want %v", tc.id, err, tc.ok)
			}
			if tc.ok {
				return
			}
			if !errors.Is(err, registry.ErrInvalidID) {
				t.Fatalf("ValidateID error %v is not ErrInvalidID", err)
			}
			if _, _, err := r.Create(ctx, registry.Spec{ID: tc.id}); !errors.Is(err, registry.ErrInvalidID) {
				t.Fatalf("Create(%q) = %v, want ErrInvalidID", tc.id, err)
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	seeds := testkafka.Seeds(t)
	if _, err := registry.New(registry.Config{Kafka: []kgo.Opt{kgo.SeedBrokers(seeds...)}}); err == nil {
		t.Fatal("New without Topic succeeded")
	}
	if _, err := registry.New(registry.Config{Topic: "x"}); err == nil {
		t.Fatal("New without Kafka options succeeded")
	}
	// A topic with more than one partition would scatter keys.
	topic := testkafka.Prefix(t) + "multi"
	adm := kadm.NewClient(testkafka.Client(t, seeds))
	if _, err := adm.CreateTopic(ctxT(t), 3, -1, nil, topic); err != nil {
		t.Fatal(err)
	}
	testkafka.WaitTopic(t, seeds, topic)
	if _, err := registry.New(registry.Config{Kafka: []kgo.Opt{kgo.SeedBrokers(seeds...)}, Topic: topic}); err == nil || !strings.Contains(err.Error(), "partitions") {
		t.Fatalf("New on a 3-partition topic: %v", err)
	}
}

func TestWriteWithoutRunTimesOut(t *testing.T) {
	seeds, topic := setup(t)
	r, err := registry.New(registry.Config{Kafka: []kgo.Opt{kgo.SeedBrokers(seeds...)}, Topic: topic})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	if _, _, err := r.Create(ctx, registry.Spec{ID: "no-run"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Create without Run: %v, want a deadline error", err)
	}
}

func TestUnreachableKafkaFailsFast(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the dial timeout")
	}
	// Port 1 on loopback refuses at once; New must not hang.
	_, err := registry.New(registry.Config{
		Kafka: []kgo.Opt{kgo.SeedBrokers("127.0.0.1:1"), kgo.RequestRetries(0), kgo.RetryTimeout(time.Second)},
		Topic: "x",
	})
	if err == nil {
		t.Fatal("New against a closed port succeeded")
	}
}

// TestRestartAfterCompaction: what a restarted instance reads after the
// cleaner dropped overwritten records and tombstones must equal what a
// running instance holds, and WaitReady must still finish.
func TestRestartAfterCompaction(t *testing.T) {
	c := testkafka.Cluster(t)
	seeds, topic := c.ListenAddrs(), testkafka.Prefix(t)+"registry"
	ctx := ctxT(t)
	r := start(t, seeds, topic)
	tokens := map[string]string{}
	for _, id := range []string{"c-1", "c-2", "c-3"} {
		_, tok, err := r.Create(ctx, registry.Spec{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		tokens[id] = tok
	}
	for _, b := range []bool{true, false, true} {
		if err := r.SetBlocked(ctx, "c-2", b); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Delete(ctx, "c-3"); err != nil {
		t.Fatal(err)
	}
	c.Compact()

	again := start(t, seeds, topic)
	var ids []string
	for _, d := range again.List() {
		ids = append(ids, d.ID)
	}
	if got := strings.Join(ids, ","); got != "c-1,c-2" {
		t.Fatalf("after compaction List = %s", got)
	}
	if err := again.Authenticate("c-1", []byte(tokens["c-1"])); err != nil {
		t.Fatal(err)
	}
	if err := again.Authenticate("c-2", []byte(tokens["c-2"])); !errors.Is(err, registry.ErrBlocked) {
		t.Fatalf("c-2 after compaction: %v, want ErrBlocked", err)
	}
}
