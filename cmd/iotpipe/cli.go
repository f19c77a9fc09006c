package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/api"
	"github.com/iotpipe/iotpipe/ingest"
	"github.com/iotpipe/iotpipe/internal/bus"
	"github.com/iotpipe/iotpipe/registry"
	"github.com/iotpipe/iotpipe/simulator"
)

// clientFlags are the flags of the subcommands that talk to a running API.
type clientFlags struct {
	apiURL, token, dataDir, apiCA string
}

func (c *clientFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&c.apiURL, "api", "http://127.0.0.1:8080", "iotpipe API base URL")
	fs.StringVar(&c.token, "api-token", "", "API bearer token (default: the admin token in --data-dir)")
	fs.StringVar(&c.dataDir, "data-dir", "data", "data directory of a local `iotpipe run`, to find its admin token")
	fs.StringVar(&c.apiCA, "api-ca", "", "PEM CA certificate(s) to verify an https:// --api with (default: the system's roots)")
}

func (c *clientFlags) client() (*api.Client, error) {
	tok, err := readAdminToken(c.dataDir, c.token)
	if err != nil {
		return nil, err
	}
	if c.apiCA == "" {
		return api.NewClient(c.apiURL, tok)
	}
	pool, err := api.CAPool(c.apiCA)
	if err != nil {
		return nil, fmt.Errorf("--api-ca: %w", err)
	}
	return api.NewClientTLS(c.apiURL, tok, &tls.Config{RootCAs: pool})
}

func runDevices(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	var output string
	fs := newFlagSet("devices", stderr)
	cf.add(fs)
	fs.StringVar(&output, "o", "text", "output: text, json, or token (create: print only the token, for scripts)")
	var name, labels string
	nameSet, labelsSet := false, false
	fs.Func("name", "create, set: display name of the device", func(v string) error { name, nameSet = v, true; return nil })
	fs.Func("labels", "create, set: labels key=value,key2=value2 (set replaces all labels); list: show only devices matching them",
		func(v string) error { labels, labelsSet = v, true; return nil })
	var cred credentialFlags
	cred.add(fs)
	var cfgf configFlags
	cfgf.add(fs)
	var cmdf commandFlags
	cmdf.add(fs)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: iotpipe devices create ID | list | get ID | set ID | delete ID | block ID | unblock ID |\n"+
			"       command ID --data S|--data-file F [--subfolder X] |\n"+
			"       credentials add ID --type T --public-key-file F [--expires RFC3339] | credentials list ID | credentials remove ID INDEX |\n"+
			"       config ID [--data S | --data-file F [--version-to-update N]] | config-versions ID | state ID [flags]")
		fs.PrintDefaults()
	}
	// Flags may come before or after the verb and id.
	var pos []string
	rest := args
	for {
		if err := parse(fs, rest); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(pos) == 0 {
		fs.Usage()
		return errUsage
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	needID := func() (string, error) {
		if len(pos) != 2 {
			fs.Usage()
			return "", errUsage
		}
		return pos[1], nil
	}
	switch pos[0] {
	case "create":
		id, err := needID()
		if err != nil {
			return err
		}
		lab, err := parseLabels(labels)
		if err != nil {
			return err
		}
		d, err := cl.CreateDevice(ctx, api.NewDevice{ID: id, Name: name, Labels: lab})
		if err != nil {
			return err
		}
		switch output {
		case "token":
			_, err = fmt.Fprintln(stdout, d.Token)
		case "json":
			err = printJSON(stdout, d)
		default:
			_, err = fmt.Fprintf(stdout, "created device %s\ntoken (shown once; only its hash is stored): %s\n\npublish a reading:\n  mosquitto_pub -h localhost -p 1883 -q 1 -i %s -u %s -P '%s' -t /devices/%s/events -m '{\"temperature\": 21.5, \"humidity\": 40}'\n",
				d.Device.ID, d.Token, d.Device.ID, d.Device.ID, d.Token, d.Device.ID)
		}
		return err
	case "list":
		list, err := cl.Devices(ctx, labels)
		if err != nil {
			return err
		}
		if output == "json" {
			return printJSON(stdout, list)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tLABELS\tBLOCKED\tCONNECTED\tCREATED")
		for _, d := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%v\t%s\n", d.ID, d.Name, formatLabels(d.Labels), d.Blocked, d.Connected, d.CreatedAt.Format(time.RFC3339))
		}
		return tw.Flush()
	case "set":
		id, err := needID()
		if err != nil {
			return err
		}
		if !nameSet && !labelsSet {
			return fmt.Errorf("devices set: give --name and/or --labels")
		}
		var u api.DeviceUpdate
		if nameSet {
			u.Name = &name
		}
		if labelsSet {
			lab, err := parseLabels(labels)
			if err != nil {
				return err
			}
			u.Labels = &lab // never nil: "" clears every label
		}
		d, err := cl.UpdateDevice(ctx, id, u)
		if err != nil {
			return err
		}
		return printJSON(stdout, d)
	case "get":
		id, err := needID()
		if err != nil {
			return err
		}
		d, err := cl.Device(ctx, id)
		if err != nil {
			return err
		}
		return printJSON(stdout, d)
	case "credentials":
		if err := cred.run(ctx, cl, pos[1:], stdout); err != nil {
			if errors.Is(err, errUsage) {
				fs.Usage()
			}
			return err
		}
		return nil
	case "config", "config-versions", "state":
		if err := cfgf.run(ctx, cl, pos, stdout); err != nil {
			if errors.Is(err, errUsage) {
				fs.Usage()
			}
			return err
		}
		return nil
	case "command":
		id, err := needID()
		if err != nil {
			return err
		}
		return cmdf.run(ctx, cl, id, cfgf.data, cfgf.dataSet, cfgf.dataFile, output, stdout)
	case "block", "unblock":
		id, err := needID()
		if err != nil {
			return err
		}
		d, err := cl.SetBlocked(ctx, id, pos[0] == "block")
		if err != nil {
			return err
		}
		if output == "json" {
			return printJSON(stdout, d)
		}
		_, err = fmt.Fprintf(stdout, "%sed device %s\n", pos[0], id)
		return err
	case "delete":
		id, err := needID()
		if err != nil {
			return err
		}
		if err := cl.DeleteDevice(ctx, id); err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "deleted device %s\n", id)
		return err
	}
	fmt.Fprintf(stderr, "unknown devices verb %q\n", pos[0])
	fs.Usage()
	return errUsage
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// analysis is one metric:aggregate pair of `iotpipe query`.
type analysis struct{ metric, aggregate string }

func parseAnalyses(s string) ([]analysis, error) {
	var out []analysis
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		m, a, ok := strings.Cut(p, ":")
		if !ok || m == "" || a == "" {
			return nil, fmt.Errorf("analysis %q: want metric:aggregate, e.g. temperature:mean", p)
		}
		out = append(out, analysis{m, a})
	}
	if len(out) == 0 {
		return nil, errors.New("no analysis given")
	}
	return out, nil
}

func runQuery(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	var from, to, analyses, devices, step, output string
	fs := newFlagSet("query", stderr)
	cf.add(fs)
	fs.StringVar(&from, "from", "now-1h", "range start: RFC 3339, Unix seconds/ms, now-<duration>")
	fs.StringVar(&to, "to", "now", "range end (exclusive)")
	fs.StringVar(&analyses, "analysis", "temperature:mean,humidity:max", "comma separated metric:aggregate (mean, max, min, count, sum)")
	fs.StringVar(&devices, "devices", "", "comma separated devices (default: all with data)")
	fs.StringVar(&step, "step", "", "print a series per device with this step (e.g. 1m) instead of one value per device")
	fs.StringVar(&output, "o", "text", "output: text or json")
	if err := parse(fs, args); err != nil {
		return err
	}
	as, err := parseAnalyses(analyses)
	if err != nil {
		return err
	}
	cl, err := cf.client()
	if err != nil {
		return err
	}
	var devList []string
	if devices != "" {
		devList = strings.Split(devices, ",")
	}
	if step != "" {
		return querySeries(ctx, cl, stdout, as, devList, from, to, step, output)
	}
	// One summary per analysis, joined into a table of device rows.
	sums := make([]api.Summary, len(as))
	rows := map[string][]*api.DeviceValue{}
	var order []string
	for i, a := range as {
		s, err := cl.Summary(ctx, api.SummaryParams{Metric: a.metric, Aggregate: a.aggregate, From: from, To: to, Devices: devList})
		if err != nil {
			return fmt.Errorf("%s:%s: %w", a.metric, a.aggregate, err)
		}
		sums[i] = s
		for j := range s.Devices {
			dv := &s.Devices[j]
			if _, ok := rows[dv.Device]; !ok {
				rows[dv.Device] = make([]*api.DeviceValue, len(as))
				order = append(order, dv.Device)
			}
			rows[dv.Device][i] = dv
		}
	}
	if output == "json" {
		return printJSON(stdout, sums)
	}
	if len(order) == 0 {
		_, err := fmt.Fprintf(stdout, "no data between %s and %s\n", from, to)
		return err
	}
	slices.Sort(order)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "DEVICE")
	for _, a := range as {
		fmt.Fprintf(tw, "\t%s(%s)", strings.ToUpper(a.aggregate), a.metric)
	}
	fmt.Fprintln(tw, "\tREADINGS")
	for _, d := range order {
		fmt.Fprint(tw, d)
		var n uint64
		for _, v := range rows[d] {
			if v == nil {
				fmt.Fprint(tw, "\t-")
				continue
			}
			fmt.Fprintf(tw, "\t%s", formatValue(v.Value))
			n = max(n, v.Count)
		}
		fmt.Fprintf(tw, "\t%d\n", n)
	}
	return tw.Flush()
}

// parseLabels reads "k=v,k2=v2" ("" is none) with the registry's own
// selector parser, so a bad key is refused before any request.
func parseLabels(s string) (map[string]string, error) {
	sel, err := registry.ParseSelector(s)
	if err != nil {
		return nil, fmt.Errorf("--labels: %w", err)
	}
	return sel, nil
}

func formatLabels(m map[string]string) string {
	keys := slices.Sorted(maps.Keys(m))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

func querySeries(ctx context.Context, cl *api.Client, stdout io.Writer, as []analysis, devices []string, from, to, step, output string) error {
	if len(devices) == 0 {
		list, err := cl.Devices(ctx, "")
		if err != nil {
			return err
		}
		for _, d := range list {
			devices = append(devices, d.ID)
		}
	}
	var all []api.Series
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tANALYSIS\tTIME\tVALUE\tREADINGS")
	for _, d := range devices {
		for _, a := range as {
			s, err := cl.Series(ctx, api.SeriesParams{Device: d, Metric: a.metric, Aggregate: a.aggregate, From: from, To: to, Step: step})
			if err != nil {
				return fmt.Errorf("%s %s:%s: %w", d, a.metric, a.aggregate, err)
			}
			all = append(all, s)
			for _, p := range s.Points {
				fmt.Fprintf(tw, "%s\t%s(%s)\t%s\t%s\t%d\n", d, a.aggregate, a.metric, p.Time.Format(time.RFC3339), formatValue(p.Value), p.Count)
			}
		}
	}
	if output == "json" {
		return printJSON(stdout, all)
	}
	return tw.Flush()
}

func formatValue(v float64) string { return fmt.Sprintf("%.6g", v) }

func runSimulate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	var (
		broker, prefix, existing string
		n, messages, qos, inflit int
		rate                     float64
		duration                 time.Duration
		seed                     int64
	)
	fs := newFlagSet("simulate", stderr)
	cf.add(fs)
	fs.StringVar(&broker, "broker", "127.0.0.1:1883", "MQTT broker host:port")
	var mqttTLS bool
	var mqttCA string
	fs.BoolVar(&mqttTLS, "mqtt-tls", false, "connect with MQTT over TLS (--broker names the TLS port, e.g. host:8883), trusting the system's CAs")
	fs.StringVar(&mqttCA, "mqtt-ca", "", "PEM CA certificate(s) that signed the broker's TLS certificate; implies --mqtt-tls")
	fs.IntVar(&n, "devices", 10, "number of simulated devices to create through the API")
	fs.StringVar(&prefix, "prefix", "sim", "device id prefix; devices are <prefix>-001... and are re-created (new token) if they exist")
	fs.StringVar(&existing, "device-tokens", "", "use existing devices instead: comma separated id=token pairs")
	fs.Float64Var(&rate, "rate", 10, "messages per second for the whole fleet (0 = as fast as possible)")
	fs.DurationVar(&duration, "duration", time.Minute, "how long to run")
	fs.IntVar(&messages, "messages", 0, "stop after this many messages in total (0 = run for --duration)")
	fs.IntVar(&qos, "qos", 1, "MQTT QoS 0 or 1")
	fs.IntVar(&inflit, "max-inflight", 64, "QoS 1 publishes awaiting PUBACK per connection")
	fs.Int64Var(&seed, "seed", 1, "random seed of the readings")
	var (
		backfill, backfillStep time.Duration
		kafkaBrokers, topicPfx string
	)
	fs.DurationVar(&backfill, "backfill", 0, "instead of publishing live, write this much history (e.g. 720h) ending now straight to Kafka, as the broker would")
	fs.DurationVar(&backfillStep, "backfill-step", time.Minute, "backfill: time between one device's readings")
	fs.StringVar(&kafkaBrokers, "kafka-brokers", "127.0.0.1:9092", "backfill: Kafka bootstrap brokers (default: the embedded Kafka of a local `iotpipe run`)")
	fs.StringVar(&topicPfx, "topic-prefix", "iot.", "backfill: prefix of the Kafka topic names")
	if err := parse(fs, args); err != nil {
		return err
	}
	var tlsCfg *tls.Config
	if mqttTLS || mqttCA != "" {
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
		if mqttCA != "" {
			pool, err := api.CAPool(mqttCA)
			if err != nil {
				return fmt.Errorf("--mqtt-ca: %w", err)
			}
			tlsCfg.RootCAs = pool
		}
	}
	var devs []simulator.Device
	if existing != "" {
		for _, p := range strings.Split(existing, ",") {
			id, tok, ok := strings.Cut(strings.TrimSpace(p), "=")
			if !ok || id == "" || tok == "" {
				return fmt.Errorf("--device-tokens: %q is not id=token", p)
			}
			devs = append(devs, simulator.Device{ID: id, Token: tok})
		}
	} else {
		cl, err := cf.client()
		if err != nil {
			return err
		}
		for i := 1; i <= n; i++ {
			id := fmt.Sprintf("%s-%03d", prefix, i)
			spec := api.NewDevice{ID: id, Name: fmt.Sprintf("Simulated sensor %d", i),
				Labels: map[string]string{"source": "simulator", "site": fmt.Sprintf("site-%d", (i-1)%3+1)}}
			d, err := cl.CreateDevice(ctx, spec)
			if api.StatusOf(err) == http.StatusConflict {
				// The simulator owns its devices: take them over with a fresh token.
				if err = cl.DeleteDevice(ctx, id); err == nil {
					d, err = cl.CreateDevice(ctx, spec)
				}
			}
			if err != nil {
				return fmt.Errorf("create device %s: %w", id, err)
			}
			devs = append(devs, simulator.Device{ID: id, Token: d.Token})
		}
		fmt.Fprintf(stderr, "created %d devices %s-001..%s-%03d\n", n, prefix, prefix, n)
	}
	log, err := (&options{logLevel: "warn", logFormat: "auto"}).logger(stderr)
	if err != nil {
		return err
	}
	if backfill > 0 {
		ids := make([]string, len(devs))
		for i, d := range devs {
			ids[i] = d.ID
		}
		return backfillHistory(ctx, stdout, log, ids, backfill, backfillStep, seed, bus.ParseBrokers(kafkaBrokers), bus.TopicNames(topicPfx).Telemetry)
	}
	rep, err := simulator.Run(ctx, simulator.Config{
		Broker: broker, TLS: tlsCfg, Devices: devs, Rate: rate, Duration: duration, Messages: messages,
		QoS: byte(qos), MaxInflight: inflit, Seed: seed, Progress: stderr, ProgressEvery: 5 * time.Second, Logger: log,
	})
	fmt.Fprintln(stdout, rep.String())
	return err
}

// backfillHistory writes the fleet's last `span` of readings to the
// telemetry topic through the same forwarder the broker uses (acks=all,
// idempotent), so the processor computes their windows as for live data.
// Useful to try dashboards over long ranges and to benchmark queries.
func backfillHistory(ctx context.Context, stdout io.Writer, log zerolog.Logger, devices []string, span, step time.Duration,
	seed int64, brokers []string, topic string) error {
	fwd, err := ingest.New(ingest.Config{Kafka: []kgo.Opt{kgo.SeedBrokers(brokers...)}, Topic: topic, Logger: log,
		Metrics: prometheus.NewRegistry(), MaxBufferedRecords: 100_000})
	if err != nil {
		return err
	}
	var (
		mu       sync.Mutex
		firstErr error
	)
	to := time.Now().UTC().Truncate(step)
	start := time.Now()
	n, err := simulator.Backfill(ctx, simulator.History{
		Devices: devices, From: to.Add(-span), To: to, Step: step, Seed: seed,
		Send: func(ctx context.Context, device string, at time.Time, payload []byte) error {
			mu.Lock()
			ferr := firstErr
			mu.Unlock()
			if ferr != nil {
				return ferr
			}
			fwd.Forward(ctx, ingest.Message{Device: device, Topic: "/devices/" + device + "/events",
				Payload: payload, ReceivedAt: at}, func(err error) {
				if err != nil {
					mu.Lock()
					firstErr = cmp.Or(firstErr, err)
					mu.Unlock()
				}
			})
			return nil
		},
	})
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	cerr := fwd.Close(closeCtx)
	mu.Lock()
	defer mu.Unlock()
	if err := errors.Join(err, firstErr, cerr); err != nil {
		return fmt.Errorf("backfill: %w", err)
	}
	el := time.Since(start)
	_, err = fmt.Fprintf(stdout, "backfilled %d messages (%d devices, %s every %s) to %s in %s (%.0f msg/s)\n",
		n, len(devices), span, step, topic, el.Round(time.Millisecond), float64(n)/el.Seconds())
	return err
}
