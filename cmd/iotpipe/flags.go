package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("iotpipe "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// envName maps a flag name to its environment variable: kafka-brokers →
// IOTPIPE_KAFKA_BROKERS.
func envName(flagName string) string {
	return "IOTPIPE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parse applies environment variables first and then the command line, so a
// flag given explicitly wins over its variable.
func parse(fs *flag.FlagSet, args []string) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if v, ok := os.LookupEnv(envName(f.Name)); ok && err == nil {
			if serr := f.Value.Set(v); serr != nil {
				err = fmt.Errorf("environment %s=%q: %w", envName(f.Name), v, serr)
			}
		}
	})
	if err != nil {
		return err
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return err
		}
		return errUsage
	}
	return nil
}

// durationList is a flag holding comma separated durations, e.g. "10s,1m".
type durationList []time.Duration

func (d *durationList) String() string {
	parts := make([]string, len(*d))
	for i, v := range *d {
		parts[i] = v.String()
	}
	return strings.Join(parts, ",")
}

func (d *durationList) Set(s string) error {
	var out []time.Duration
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		v, err := time.ParseDuration(p)
		if err != nil {
			return err
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return fmt.Errorf("empty list")
	}
	*d = out
	return nil
}
