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

// commandFlags are the flags of `iotpipe devices command ID`. The payload
// comes from --data/--data-file, which `devices config` defines and both
// verbs share (one flag set serves every devices verb).
type commandFlags struct {
	subfolder string
}

func (c *commandFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&c.subfolder, "subfolder", "", "command: subfolder; the device gets it on /devices/ID/commands/<subfolder>")
}

// run sends a command to a connected device: `devices command ID`; data is
// the --data value if dataSet, dataFile the --data-file path.
func (c *commandFlags) run(ctx context.Context, cl *api.Client, id, data string, dataSet bool, dataFile, output string, stdout io.Writer) error {
	if dataSet == (dataFile != "") {
		return errors.New("devices command: give exactly one of --data and --data-file")
	}
	payload := []byte(data)
	if dataFile != "" {
		var err error
		if payload, err = os.ReadFile(dataFile); err != nil {
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
