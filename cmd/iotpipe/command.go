package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/iotpipe/iotpipe/api"
)

// commandFlags are the flags of `iotpipe devices command ID`.
type commandFlags struct {
	data, dataFile, subfolder string
	dataSet                   bool
}

func (c *commandFlags) add(fs *flag.FlagSet) {
	fs.Func("data", "command: the command payload as text", func(v string) error { c.data, c.dataSet = v, true; return nil })
	fs.StringVar(&c.dataFile, "data-file", "", "command: file holding the command payload (sent as is, binary allowed)")
	fs.StringVar(&c.subfolder, "subfolder", "", "command: subfolder; the device gets it on /devices/ID/commands/<subfolder>")
}

// run sends a command to a connected device: `devices command ID`.
func (c *commandFlags) run(ctx context.Context, cl *api.Client, id string, output string, stdout io.Writer) error {
	if c.dataSet == (c.dataFile != "") {
		return errors.New("devices command: give exactly one of --data and --data-file")
	}
	payload := []byte(c.data)
	if c.dataFile != "" {
		var err error
		if payload, err = os.ReadFile(c.dataFile); err != nil {
			return fmt.Errorf("devices command: %w", err)
		}
	}
	if len(payload) > api.MaxCommandBytes {
		return fmt.Errorf("devices command: payload is %d bytes; at most %d", len(payload), api.MaxCommandBytes)
	}
	res, err := cl.SendCommand(ctx, id, payload, c.subfolder)
	if err != nil {
		return err
	}
	if output == "json" {
		return printJSON(stdout, res)
	}
	how := "acknowledged by the device (QoS 1)"
	if res.QoS == 0 {
		how = "written to the device's connection (QoS 0 subscription)"
	}
	_, err = fmt.Fprintf(stdout, "command delivered on %s, %s\n", res.Topic, how)
	return err
}
