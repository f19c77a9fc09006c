// Command iotpipe is the IoT streaming analytics pipeline: an MQTT broker
// that authenticates devices, forwards their telemetry to Kafka, a stream
// processor computing windowed aggregates into ClickHouse, and an HTTP API.
//
//	iotpipe run                  everything in one process, embedded Kafka and ClickHouse
//	iotpipe devices create ID    register a device and print its access token
//	iotpipe simulate             a device fleet and load generator
//	iotpipe query                mean temperature and max humidity per device
//
// Every flag can also be set by environment variable: --kafka-brokers is
// IOTPIPE_KAFKA_BROKERS. A flag on the command line wins over the variable.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"run", "run the whole pipeline in one process (embedded Kafka and ClickHouse by default)", runAll},
		{"broker", "run only the MQTT broker and ingest (scale-out; needs --kafka-brokers)", runBroker},
		{"processor", "run only the stream processor (scale-out; needs --kafka-brokers)", runProcessor},
		{"api", "run only the HTTP API (scale-out; needs --kafka-brokers and --clickhouse-addr)", runAPI},
		{"devices", "manage devices through the API: create, list, get, delete", runDevices},
		{"simulate", "simulate a device fleet publishing temperature and humidity (load generator)", runSimulate},
		{"query", "print windowed analysis (default: mean temperature, max humidity per device)", runQuery},
		{"migrate", "apply storage migrations and exit", runMigrate},
		{"version", "print the version", func(_ context.Context, _ []string, stdout, _ io.Writer) error {
			_, err := fmt.Fprintln(stdout, "iotpipe", version)
			return err
		}},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code := mainWithExit(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// errUsage marks errors for which the usage text was already printed.
var errUsage = errors.New("usage")

func mainWithExit(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			return 2
		default:
			fmt.Fprintf(stderr, "iotpipe %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "iotpipe: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: iotpipe <command> [flags]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'iotpipe <command> -h' for the flags of a command. Every flag can be set as IOTPIPE_<FLAG>.")
}
