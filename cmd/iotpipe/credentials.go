package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/iotpipe/iotpipe/api"
)

// credentialFlags are the flags of `iotpipe devices credentials add`.
type credentialFlags struct {
	typ, keyFile, expires string
}

func (c *credentialFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&c.typ, "type", "", "credentials add: RSA_PEM, RSA_X509_PEM, ES256_PEM, ES256_X509_PEM (JWT keys) or X509_CERT_PEM (pinned TLS client certificate)")
	fs.StringVar(&c.keyFile, "public-key-file", "", "credentials add: PEM file with the public key or certificate")
	fs.StringVar(&c.expires, "expires", "", "credentials add: expiry, RFC 3339 (default: never)")
}

// run does `credentials add ID`, `credentials list ID` and `credentials
// remove ID INDEX`; pos starts after "credentials".
func (c *credentialFlags) run(ctx context.Context, cl *api.Client, pos []string, stdout io.Writer) error {
	switch {
	case len(pos) == 2 && pos[0] == "add":
		if c.typ == "" || c.keyFile == "" {
			return fmt.Errorf("devices credentials add: give --type and --public-key-file")
		}
		key, err := os.ReadFile(c.keyFile)
		if err != nil {
			return fmt.Errorf("devices credentials add: %w", err)
		}
		nc := api.NewCredential{Type: c.typ, PublicKey: string(key)}
		if c.expires != "" {
			t, err := time.Parse(time.RFC3339, c.expires)
			if err != nil {
				return fmt.Errorf("devices credentials add: --expires: %w", err)
			}
			nc.ExpiresAt = &t
		}
		d, err := cl.AddCredential(ctx, pos[1], nc)
		if err != nil {
			return err
		}
		return printJSON(stdout, d)
	case len(pos) == 2 && pos[0] == "list":
		d, err := cl.Device(ctx, pos[1])
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "INDEX\tTYPE\tCREATED\tEXPIRES\tSHA256 FINGERPRINT")
		for i, c := range d.Credentials {
			exp := "never"
			if !c.ExpiresAt.IsZero() {
				exp = c.ExpiresAt.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", i, c.Type, c.CreatedAt.Format(time.RFC3339), exp, c.SHA256Fingerprint)
		}
		return tw.Flush()
	case len(pos) == 3 && pos[0] == "remove":
		i, err := strconv.Atoi(pos[2])
		if err != nil {
			return fmt.Errorf("devices credentials remove: index %q is not a number", pos[2])
		}
		if err := cl.RemoveCredential(ctx, pos[1], i); err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "removed credential %d of device %s\n", i, pos[1])
		return err
	}
	return errUsage
}
