package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"

	"github.com/iotpipe/iotpipe/api"
)

// tlsOptions are the TLS flags of the broker and the API, loaded by
// validate so a missing or mismatched file fails before anything starts.
// Certificates are read once at start: renewing them needs a restart.
type tlsOptions struct {
	mqttCert, mqttKey, mqttAddr, mqttClientCA, mqttWSAddr string
	apiCert, apiKey                                       string

	broker    *tls.Config    // nil: no MQTT TLS listener
	clientCAs *x509.CertPool // nil: no client CA
	api       *tls.Config    // nil: plain HTTP
}

func (t *tlsOptions) addBroker(fs *flag.FlagSet) {
	fs.StringVar(&t.mqttAddr, "mqtt-tls-addr", ":8883", "MQTT over TLS listen address, served when --mqtt-tls-cert is set")
	fs.StringVar(&t.mqttCert, "mqtt-tls-cert", "", "PEM server certificate (chain) for MQTT over TLS (and wss); with --mqtt-tls-key enables TLS")
	fs.StringVar(&t.mqttKey, "mqtt-tls-key", "", "PEM private key of --mqtt-tls-cert")
	fs.StringVar(&t.mqttClientCA, "mqtt-client-ca", "", "PEM CA certificate(s): a device TLS client certificate they signed authenticates the device named by its CommonName")
	fs.StringVar(&t.mqttWSAddr, "mqtt-ws-addr", "", "MQTT over WebSocket listen address (empty: off); wss when --mqtt-tls-cert is set")
}

func (t *tlsOptions) addAPI(fs *flag.FlagSet) {
	fs.StringVar(&t.apiCert, "api-tls-cert", "", "PEM server certificate (chain) of the HTTP API; with --api-tls-key serves HTTPS")
	fs.StringVar(&t.apiKey, "api-tls-key", "", "PEM private key of --api-tls-cert")
}

func (t *tlsOptions) load() error {
	var err error
	if t.broker, err = keyPair("mqtt-tls", t.mqttCert, t.mqttKey); err != nil {
		return err
	}
	if t.api, err = keyPair("api-tls", t.apiCert, t.apiKey); err != nil {
		return err
	}
	if t.mqttClientCA != "" {
		if t.broker == nil {
			return fmt.Errorf("--mqtt-client-ca needs --mqtt-tls-cert and --mqtt-tls-key (client certificates come over TLS)")
		}
		if t.clientCAs, err = api.CAPool(t.mqttClientCA); err != nil {
			return fmt.Errorf("--mqtt-client-ca: %w", err)
		}
	}
	return nil
}

// keyPair loads --<name>-cert and --<name>-key; both empty is no TLS.
func keyPair(name, cert, key string) (*tls.Config, error) {
	if cert == "" && key == "" {
		return nil, nil
	}
	if cert == "" || key == "" {
		return nil, fmt.Errorf("--%s-cert and --%s-key must be given together", name, name)
	}
	kp, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("--%s-cert/--%s-key: %w", name, name, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{kp}}, nil
}
