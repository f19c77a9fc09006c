// Command go-device is a sample iotpipe device in Go, doing what Google's
// Cloud IoT Core MQTT samples did: it authenticates with a JWT signed by
// its private key (RS256 or ES256; the public key is registered with
// `iotpipe devices credentials add`), publishes telemetry to
// /devices/ID/events at QoS 1 waiting for each PUBACK, subscribes to its
// config and commands topics (printing each command; with --wait-commands N
// it stays connected until N arrived), and reconnects with a fresh JWT before the
// current one expires (iotpipe closes the connection when it does).
//
//	go run ./examples/go-device --project-id demo-project --device-id dev-1 \
//	  --private-key-file rsa_private.pem --algorithm RS256 --num-messages 5
//
// It exits non-zero if it cannot connect or a publish is not acknowledged.
// JWTs are signed with the standard library only (crypto/rsa, crypto/ecdsa).
package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log"
	"math"
	mrand "math/rand/v2"
	"os"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

type config struct {
	host, projectID, registryID, region, deviceID string
	keyFile, algorithm, messageType               string
	port, numMessages                             int
	jwtExpires, interval, timeout                 time.Duration
	cfg                                           *configState // config.go
	waitCommands                                  int
	waitTimeout                                   time.Duration
}

func main() {
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.SetPrefix("go-device: ")
	var c config
	flag.StringVar(&c.host, "host", "localhost", "iotpipe MQTT host")
	flag.IntVar(&c.port, "port", 1883, "iotpipe MQTT port")
	flag.StringVar(&c.projectID, "project-id", "", "project id: the JWT audience (iotpipe run --jwt-audience)")
	flag.StringVar(&c.registryID, "registry-id", "iotpipe", "registry id (part of the Cloud IoT Core client id; iotpipe ignores it)")
	flag.StringVar(&c.region, "cloud-region", "local", "cloud region (part of the Cloud IoT Core client id; iotpipe ignores it)")
	flag.StringVar(&c.deviceID, "device-id", "", "device id")
	flag.StringVar(&c.keyFile, "private-key-file", "", "PEM private key (PKCS#8, PKCS#1 RSA or SEC 1 EC)")
	flag.StringVar(&c.algorithm, "algorithm", "RS256", "JWT algorithm: RS256 or ES256")
	flag.DurationVar(&c.jwtExpires, "jwt-expires", 20*time.Minute, "JWT lifetime (at most 24h); the device reconnects with a new JWT before it ends")
	flag.IntVar(&c.numMessages, "num-messages", 10, "telemetry messages to publish")
	flag.StringVar(&c.messageType, "message-type", "event", "message type: event")
	c.cfg = newConfigState(flag.CommandLine)
	flag.DurationVar(&c.interval, "message-interval", time.Second, "pause between messages")
	flag.DurationVar(&c.timeout, "timeout", 10*time.Second, "how long to wait for CONNACK, SUBACK and each PUBACK")
	flag.IntVar(&c.waitCommands, "wait-commands", 0, "after the messages, stay connected until this many commands arrived")
	flag.DurationVar(&c.waitTimeout, "wait-timeout", time.Minute, "how long --wait-commands waits at most")
	flag.Parse()
	if err := run(c); err != nil {
		log.Printf("error: %v", err)
		os.Exit(1)
	}
}

func run(c config) error {
	switch {
	case c.projectID == "" || c.deviceID == "" || c.keyFile == "":
		return errors.New("--project-id, --device-id and --private-key-file are required")
	case c.messageType != "event":
		return fmt.Errorf("--message-type %q: only event is supported", c.messageType)
	case c.jwtExpires <= 0 || c.jwtExpires > 24*time.Hour:
		return fmt.Errorf("--jwt-expires %v: must be in (0, 24h]", c.jwtExpires)
	case c.numMessages < 0:
		return errors.New("--num-messages must not be negative")
	}
	key, err := loadKey(c.keyFile, c.algorithm)
	if err != nil {
		return err
	}
	d := &device{c: c, key: key, commands: make(chan struct{}, 64)}
	if err := d.connect(); err != nil {
		return err
	}
	defer func() { d.client.Disconnect(250) }()
	if err := c.cfg.publishState(d.client, c.deviceID, c.timeout); err != nil {
		return err
	}

	topic := "/devices/" + c.deviceID + "/events"
	failed := 0
	var lastTS int64
	for i := 1; i <= c.numMessages; i++ {
		if time.Now().After(d.refreshAt) {
			log.Printf("JWT expires at %s: reconnecting with a new one", d.expiresAt.Format(time.RFC3339))
			d.client.Disconnect(250)
			if err := d.connect(); err != nil {
				return err
			}
		}
		ts := max(time.Now().UnixMilli(), lastTS+1) // one reading per millisecond: iotpipe deduplicates by event time
		lastTS = ts
		payload, _ := json.Marshal(map[string]any{
			"ts":          ts,
			"temperature": math.Round((20+5*math.Sin(float64(i)/3)+mrand.Float64())*100) / 100,
			"humidity":    math.Round((40+10*mrand.Float64())*100) / 100,
		})
		tok := d.client.Publish(topic, 1, false, payload)
		switch {
		case !tok.WaitTimeout(c.timeout):
			failed++
			log.Printf("message %d/%d: no PUBACK within %v", i, c.numMessages, c.timeout)
		case tok.Error() != nil:
			failed++
			log.Printf("message %d/%d: %v", i, c.numMessages, tok.Error())
		default:
			log.Printf("message %d/%d acknowledged: %s", i, c.numMessages, payload)
		}
		if i < c.numMessages {
			time.Sleep(c.interval)
		}
	}
	if err := c.cfg.waitForConfig(); err != nil {
		return err
	}
	if err := d.awaitCommands(c.waitCommands, c.waitTimeout); err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d messages not acknowledged", failed, c.numMessages)
	}
	log.Printf("all %d messages acknowledged", c.numMessages)
	return nil
}

type device struct {
	c                    config
	key                  crypto.Signer
	client               mqtt.Client
	expiresAt, refreshAt time.Time
	commands             chan struct{} // one per command received
}

// connect opens a session with a new JWT and subscribes to config and
// commands.
func (d *device) connect() error {
	c := d.c
	now := time.Now()
	jwt, err := createJWT(c.projectID, c.algorithm, d.key, now, c.jwtExpires)
	if err != nil {
		return err
	}
	d.expiresAt = now.Add(c.jwtExpires)
	// Reconnect a minute (or a tenth of a short lifetime) before expiry.
	d.refreshAt = d.expiresAt.Add(-min(time.Minute, c.jwtExpires/10))

	clientID := fmt.Sprintf("projects/%s/locations/%s/registries/%s/devices/%s", c.projectID, c.region, c.registryID, c.deviceID)
	opts := mqtt.NewClientOptions().
		AddBroker(fmt.Sprintf("tcp://%s:%d", c.host, c.port)).
		SetClientID(clientID).
		SetUsername("unused"). // ignored, as by Cloud IoT Core
		SetPassword(jwt).
		SetProtocolVersion(4). // MQTT 3.1.1
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(c.timeout).
		SetWriteTimeout(c.timeout).
		SetOrderMatters(false).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { log.Printf("connection lost: %v", err) })
	d.client = mqtt.NewClient(opts)
	tok := d.client.Connect()
	if !tok.WaitTimeout(c.timeout) {
		return fmt.Errorf("connect to %s:%d: no CONNACK within %v", c.host, c.port, c.timeout)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("connect to %s:%d as %s: %w", c.host, c.port, clientID, err)
	}
	log.Printf("connected to %s:%d as %s (JWT %s, expires %s)", c.host, c.port, clientID, c.algorithm, d.expiresAt.Format(time.RFC3339))

	// The latest config arrives on subscribe and on every update (QoS 1);
	// commands on /devices/ID/commands[/subfolder] (see handleCommands).
	onMessage := func(_ mqtt.Client, m mqtt.Message) {
		if m.Topic() == "/devices/"+c.deviceID+"/config" {
			c.cfg.onConfig(m)
			return
		}
		log.Printf("received on %s: %s", m.Topic(), m.Payload())
	}
	subs := map[string]byte{
		"/devices/" + c.deviceID + "/config":     1,
		"/devices/" + c.deviceID + "/commands/#": 0,
	}
	st := d.client.SubscribeMultiple(subs, onMessage)
	if !st.WaitTimeout(c.timeout) {
		return fmt.Errorf("subscribe: no SUBACK within %v", c.timeout)
	}
	if err := st.Error(); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	for t, q := range st.(*mqtt.SubscribeToken).Result() {
		if q == 0x80 {
			return fmt.Errorf("subscribe %s: refused", t)
		}
		log.Printf("subscribed to %s (QoS %d)", t, q)
	}
	d.handleCommands()
	return nil
}

// ---- commands (Cloud IoT Core sendCommandToDevice; `iotpipe devices command`) ----

// handleCommands routes /devices/ID/commands[/subfolder] to onCommand
// (replacing the subscription's generic handler for that filter).
func (d *device) handleCommands() {
	d.client.AddRoute("/devices/"+d.c.deviceID+"/commands/#", d.onCommand)
}

func (d *device) onCommand(_ mqtt.Client, m mqtt.Message) {
	log.Printf("command received on %s: %s", m.Topic(), m.Payload())
	select {
	case d.commands <- struct{}{}:
	default: // nobody counts that many
	}
}

// awaitCommands stays connected until n commands arrived or timeout passed.
func (d *device) awaitCommands(n int, timeout time.Duration) error {
	if n <= 0 {
		return nil
	}
	log.Printf("waiting up to %v for %d command(s)", timeout, n)
	deadline := time.After(timeout)
	for got := 0; got < n; got++ {
		select {
		case <-d.commands:
		case <-deadline:
			return fmt.Errorf("%d of %d commands received within %v", got, n, timeout)
		}
	}
	return nil
}

// loadKey reads a PEM private key matching alg.
func loadKey(path, alg string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	var k any
	switch block.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%s: unsupported PEM block %q", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	switch k := k.(type) {
	case *rsa.PrivateKey:
		if alg != "RS256" {
			return nil, fmt.Errorf("%s holds an RSA key: use --algorithm RS256", path)
		}
		return k, nil
	case *ecdsa.PrivateKey:
		if alg != "ES256" || k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%s holds an EC key: use --algorithm ES256 with a P-256 key", path)
		}
		return k, nil
	}
	return nil, fmt.Errorf("%s: unsupported key type %T", path, k)
}

// createJWT returns a compact JWS with the claims Cloud IoT Core required:
// aud (the project id), iat and exp.
func createJWT(aud, alg string, key crypto.Signer, now time.Time, lifetime time.Duration) (string, error) {
	enc := base64.RawURLEncoding
	header, _ := json.Marshal(map[string]string{"alg": alg, "typ": "JWT"})
	claims, _ := json.Marshal(map[string]any{"aud": aud, "iat": now.Unix(), "exp": now.Add(lifetime).Unix()})
	signing := enc.EncodeToString(header) + "." + enc.EncodeToString(claims)
	digest := sha256.Sum256([]byte(signing))
	var sig []byte
	switch k := key.(type) {
	case *rsa.PrivateKey:
		s, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, digest[:])
		if err != nil {
			return "", err
		}
		sig = s
	case *ecdsa.PrivateKey:
		r, s, err := ecdsa.Sign(rand.Reader, k, digest[:])
		if err != nil {
			return "", err
		}
		// JWS ES256: r and s as fixed 32-byte big-endian integers.
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
	default:
		return "", fmt.Errorf("unsupported key %T", key)
	}
	return signing + "." + enc.EncodeToString(sig), nil
}
