package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/iotpipe/iotpipe/api"
)

// configFlags are the flags of `iotpipe devices config`.
type configFlags struct {
	data, dataFile  string
	dataSet         bool
	versionToUpdate int64
}

func (c *configFlags) add(fs *flag.FlagSet) {
	fs.Func("data", "config: set the device's config to this string; command: the command payload", func(v string) error { c.data, c.dataSet = v, true; return nil })
	fs.StringVar(&c.dataFile, "data-file", "", "config: set the device's config to this file's bytes; command: send this file's bytes")
	fs.Int64Var(&c.versionToUpdate, "version-to-update", 0, "config: write only if the latest version is this one (0: unconditionally)")
}

// run does `config ID` (show, or set with --data/--data-file),
// `config-versions ID` and `state ID`; pos starts with the verb.
func (c *configFlags) run(ctx context.Context, cl *api.Client, pos []string, stdout io.Writer) error {
	if len(pos) != 2 {
		return errUsage
	}
	id := pos[1]
	switch pos[0] {
	case "config":
		if c.dataSet && c.dataFile != "" {
			return fmt.Errorf("devices config: give --data or --data-file, not both")
		}
		if !c.dataSet && c.dataFile == "" {
			if c.versionToUpdate != 0 {
				return fmt.Errorf("devices config: --version-to-update needs --data or --data-file")
			}
			cfg, err := cl.Config(ctx, id)
			if err != nil {
				return err
			}
			return printJSON(stdout, cfg)
		}
		data := []byte(c.data)
		if c.dataFile != "" {
			b, err := os.ReadFile(c.dataFile)
			if err != nil {
				return fmt.Errorf("devices config: %w", err)
			}
			data = b
		}
		cfg, err := cl.SetConfig(ctx, id, data, c.versionToUpdate)
		if err != nil {
			return err
		}
		return printJSON(stdout, cfg)
	case "config-versions":
		vs, err := cl.ConfigVersions(ctx, id)
		if err != nil {
			return err
		}
		return printJSON(stdout, api.ConfigVersions{DeviceConfigs: vs})
	case "state":
		st, err := cl.State(ctx, id)
		if err != nil {
			return err
		}
		return printJSON(stdout, st)
	}
	return errUsage
}
