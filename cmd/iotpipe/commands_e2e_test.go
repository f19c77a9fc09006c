package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/iotpipe/iotpipe/api"
	"github.com/iotpipe/iotpipe/internal/testkafka"
)

// The acceptance test of cloud-to-device commands: two `iotpipe run`
// instances share one Kafka. A device created through instance 1 connects
// to instance 2 at once; a command sent through instance 1's API and CLI
// reaches it; a command to an offline device is refused with 409 at once.
func TestCommandsAcrossInstances(t *testing.T) {
	seeds := testkafka.Seeds(t) // kfake started by this test, or IOTPIPE_KAFKA_BROKERS
	prefix := testkafka.Prefix(t)
	shared := []string{"--kafka-brokers", strings.Join(seeds, ","), "--topic-prefix", prefix,
		"--consumer-group", prefix + "processor", "--partitions", "2"}
	p1, p2 := newPipeline(t), newPipeline(t)
	p1.kafkaArg, p2.kafkaArg = shared, shared
	p1.start()
	p2.start()

	tok := p1.createDevice("valve-1")
	// Instance 2 learns of the device from the registry topic within
	// milliseconds; the first CONNECT may race it, so poll.
	var got chan *paho.Publish
	var dev *paho.Client
	testkafka.Eventually(t, 5*time.Second, "valve-1 to connect to instance 2", func() bool {
		got, dev = connectDevice(t, p2.mqttPort, "projects/p/locations/l/registries/r/devices/valve-1", tok)
		return dev != nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := dev.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "/devices/valve-1/commands/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	cl1 := p1.client()
	testkafka.Eventually(t, 5*time.Second, "instance 1 to see valve-1 connected", func() bool {
		d, err := cl1.Device(ctx, "valve-1")
		return err == nil && d.Connected && !d.LastConnectedTime.IsZero()
	})

	out, err := p1.cli("devices", "list")
	if err != nil {
		t.Fatal(err)
	}
	listed := false
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == "valve-1" {
			listed = f[len(f)-2] == "true" // CONNECTED, before CREATED
		}
	}
	if !listed {
		t.Fatalf("devices list does not show valve-1 connected:\n%s", out)
	}
	out, err = p1.cli("devices", "command", "valve-1", "--data", "open 30%", "--subfolder", "valve/main")
	if err != nil || !strings.Contains(out, "/devices/valve-1/commands/valve/main") || !strings.Contains(out, "acknowledged") {
		t.Fatalf("cli command: %q %v", out, err)
	}
	select {
	case pk := <-got:
		if pk.Topic != "/devices/valve-1/commands/valve/main" || string(pk.Payload) != "open 30%" || pk.QoS != 1 {
			t.Fatalf("device got %s %q QoS %d", pk.Topic, pk.Payload, pk.QoS)
		}
	default:
		t.Fatal("the CLI reported delivery before the device had the command")
	}
	res, err := cl1.SendCommand(ctx, "valve-1", []byte{0xde, 0xad}, "")
	if err != nil || res.Topic != "/devices/valve-1/commands" || res.QoS != 1 {
		t.Fatalf("api command: %+v %v", res, err)
	}
	if pk := <-got; string(pk.Payload) != "\xde\xad" {
		t.Fatalf("device got %q", pk.Payload)
	}

	// A binary payload from a file; the CLI refuses ambiguous input itself.
	file := filepath.Join(t.TempDir(), "cmd.bin")
	if err := os.WriteFile(file, []byte{0, 1, 2, 0xff}, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := p1.cli("devices", "command", "valve-1", "--data-file", file); err != nil {
		t.Fatalf("cli --data-file: %q %v", out, err)
	}
	if pk := <-got; string(pk.Payload) != "\x00\x01\x02\xff" {
		t.Fatalf("device got %q", pk.Payload)
	}
	if _, err := p1.cli("devices", "command", "valve-1", "--data", "x", "--data-file", file); err == nil ||
		!strings.Contains(err.Error(), "exactly one of --data and --data-file") {
		t.Fatalf("both --data and --data-file: %v", err)
	}

	// Scale-out: a broker-only instance (`iotpipe broker`) delivers too.
	brokerMQTT := startBrokerOnly(t, []string{"--kafka-brokers", strings.Join(seeds, ","), "--topic-prefix", prefix})
	tok3 := p1.createDevice("valve-3")
	var got3 chan *paho.Publish
	var dev3 *paho.Client
	testkafka.Eventually(t, 5*time.Second, "valve-3 to connect to the broker-only instance", func() bool {
		got3, dev3 = connectDevice(t, brokerMQTT, "valve-3", tok3)
		return dev3 != nil
	})
	if _, err := dev3.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "/devices/valve-3/commands", QoS: 0}}}); err != nil {
		t.Fatal(err)
	}
	testkafka.Eventually(t, 5*time.Second, "instance 1 to see valve-3 connected", func() bool {
		d, err := cl1.Device(ctx, "valve-3")
		return err == nil && d.Connected
	})
	if res, err := cl1.SendCommand(ctx, "valve-3", []byte("q0"), ""); err != nil || res.QoS != 0 {
		t.Fatalf("command via the broker-only instance: %+v %v", res, err)
	}
	if pk := <-got3; string(pk.Payload) != "q0" {
		t.Fatalf("valve-3 got %q", pk.Payload)
	}

	// Offline devices: never connected, and gone.
	p1.createDevice("valve-2")
	refusedAtOnce(t, cl1, "valve-2")
	if out, err := p1.cli("devices", "command", "valve-2", "--data", "x"); err == nil || !strings.Contains(err.Error(), "device_not_connected") {
		t.Fatalf("cli to offline device: %q %v", out, err)
	}
	_ = dev.Disconnect(&paho.Disconnect{})
	testkafka.Eventually(t, 5*time.Second, "instance 1 to see valve-1 disconnected", func() bool {
		d, err := cl1.Device(ctx, "valve-1")
		return err == nil && !d.Connected && d.LastDisconnectedTime.After(d.LastConnectedTime)
	})
	refusedAtOnce(t, cl1, "valve-1")
	p2.stop()
	p1.stop()
}

// startBrokerOnly runs `iotpipe broker` on kafkaArgs and returns its MQTT
// port once /readyz answers.
func startBrokerOnly(t *testing.T, kafkaArgs []string) int {
	t.Helper()
	mqttPort, opsPort := freePort(t), freePort(t)
	args := append([]string{"broker", "--log-format", "json", "--data-dir", t.TempDir(),
		"--mqtt-addr", fmt.Sprintf("127.0.0.1:%d", mqttPort), "--http-addr", fmt.Sprintf("127.0.0.1:%d", opsPort)}, kafkaArgs...)
	var logs syncBuffer
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("iotpipe broker exited with %v\n%s", err, tail(logs.String(), 30))
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("iotpipe broker did not stop within 30 s of SIGTERM")
		}
	})
	testkafka.Eventually(t, 60*time.Second, "iotpipe broker ready", func() bool {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("iotpipe broker exited: %v\n%s", err, tail(logs.String(), 30))
		default:
		}
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", opsPort))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return mqttPort
}

func refusedAtOnce(t *testing.T, cl *api.Client, id string) {
	t.Helper()
	start := time.Now()
	_, err := cl.SendCommand(context.Background(), id, []byte("x"), "")
	took := time.Since(start)
	if api.StatusOf(err) != http.StatusConflict || !strings.Contains(err.Error(), "device_not_connected") || took >= time.Second {
		t.Fatalf("command to offline %s: %v after %v, want 409 device_not_connected in < 1 s", id, err, took)
	}
}

// connectDevice connects a Paho v5 client; nil if the CONNECT was refused.
func connectDevice(t *testing.T, port int, clientID, token string) (chan *paho.Publish, *paho.Client) {
	t.Helper()
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *paho.Publish, 8)
	c := paho.NewClient(paho.ClientConfig{Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			got <- pr.Packet
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true,
		PasswordFlag: true, Password: []byte(token)})
	if err != nil || ca.ReasonCode != 0 {
		conn.Close()
		return nil, nil
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	return got, c
}

// An instance killed with its devices connected cannot say they left: its
// heartbeats stop, and within the presence lease (15 s) the other instance
// stops counting them as connected and refuses commands to them at once.
func TestCommandsInstanceCrash(t *testing.T) {
	seeds := testkafka.Seeds(t)
	prefix := testkafka.Prefix(t)
	shared := []string{"--kafka-brokers", strings.Join(seeds, ","), "--topic-prefix", prefix, "--partitions", "2"}
	p1, p2 := newPipeline(t), newPipeline(t)
	// Separate processor groups: a killed group member would hold up
	// instance 1's processor at shutdown, which is not what this tests.
	p1.kafkaArg = append(slices.Clone(shared), "--consumer-group", prefix+"processor1")
	p2.kafkaArg = append(slices.Clone(shared), "--consumer-group", prefix+"processor2")
	p1.start()
	p2.start()
	tok := p1.createDevice("pump-1")
	var dev *paho.Client
	testkafka.Eventually(t, 5*time.Second, "pump-1 to connect to instance 2", func() bool {
		_, dev = connectDevice(t, p2.mqttPort, "pump-1", tok)
		return dev != nil
	})
	cl1 := p1.client()
	ctx := context.Background()
	testkafka.Eventually(t, 5*time.Second, "instance 1 to see pump-1 connected", func() bool {
		d, err := cl1.Device(ctx, "pump-1")
		return err == nil && d.Connected
	})
	killed := time.Now()
	if err := p2.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	p2.exited <- <-p2.exited
	testkafka.Eventually(t, 25*time.Second, "instance 1 to stop counting pump-1 as connected", func() bool {
		d, err := cl1.Device(ctx, "pump-1")
		return err == nil && !d.Connected
	})
	took := time.Since(killed)
	d, _ := cl1.Device(ctx, "pump-1")
	if d.LastDisconnectedTime.Before(d.LastConnectedTime) || d.LastDisconnectedTime.After(killed.Add(time.Second)) {
		t.Errorf("after the crash: %+v; want last_disconnected_time between the connection and the kill at %v", d.DevicePresence, killed)
	}
	t.Logf("pump-1 counted as disconnected %v after its instance was killed", took.Round(100*time.Millisecond))
	refusedAtOnce(t, cl1, "pump-1")
	p1.stop()
}
