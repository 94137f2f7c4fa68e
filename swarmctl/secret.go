package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/gogo/protobuf/proto"
	"github.com/urfave/cli/v2"

	"github.com/flotilla/flotilla/api"
)

// maxDataSize bounds the data of a secret or config (500 KiB, as in SwarmKit).
const maxDataSize = 500 * 1024

func secretCommand() *cli.Command {
	return &cli.Command{
		Name:  "secret",
		Usage: "manage secrets (their data is never printed)",
		Subcommands: []*cli.Command{
			{
				Name:        "create",
				Usage:       "create a secret",
				ArgsUsage:   "NAME",
				Description: "The data comes from -f FILE, or from standard input with -f - (or when -f is not given and input is not a terminal).",
				Flags:       dataFlags("secret"),
				Action:      secretCreate,
			},
			{Name: "ls", Usage: "list secrets", Flags: listFlags(), Action: secretList},
			{Name: "inspect", Usage: "print secrets as JSON (without their data)", ArgsUsage: "SECRET...", Action: secretInspect},
			{Name: "rm", Aliases: []string{"remove"}, Usage: "remove secrets", ArgsUsage: "SECRET...", Action: secretRemove},
		},
	}
}

// dataFlags are the flags of secret and config create.
func dataFlags(what string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "read the " + what + " from `FILE` (- for standard input)"},
		list("label", what+" label `K=V`"),
	}
}

// readData reads the data of a new secret or config from -f FILE or -f -;
// without -f, from standard input unless it is a terminal.
func readData(c *cli.Context, what string) ([]byte, error) {
	var r io.Reader
	switch path := c.String("file"); {
	case path == "-" || (!c.IsSet("file") && !isTerminal(c.App.Reader)):
		r = c.App.Reader
	case path == "":
		return nil, fmt.Errorf("no %s data: give -f FILE, or -f - to read standard input", what)
	default:
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("-f: %w", err)
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxDataSize+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read the %s data: %w", what, err)
	}
	switch {
	case len(data) == 0:
		return nil, fmt.Errorf("the %s data is empty", what)
	case len(data) > maxDataSize:
		return nil, fmt.Errorf("the %s data is larger than %d KiB", what, maxDataSize/1024)
	}
	return data, nil
}

func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// newObjectAnnotations reads NAME and --label of secret and config create.
func newObjectAnnotations(c *cli.Context, what string) (api.Annotations, error) {
	if err := trailingFlag(c, 0); err != nil {
		return api.Annotations{}, err
	}
	if c.NArg() != 1 || c.Args().First() == "" {
		return api.Annotations{}, fmt.Errorf("%q requires exactly 1 argument: the %s name (see '%s --help')", helpName(c), what, helpName(c))
	}
	a := api.Annotations{Name: c.Args().First()}
	if c.IsSet("label") {
		labels, err := parseLabels("label", c.StringSlice("label"))
		if err != nil {
			return a, err
		}
		a.Labels = labels
	}
	return a, nil
}

func secretCreate(c *cli.Context) error {
	ann, err := newObjectAnnotations(c, "secret")
	if err != nil {
		return err
	}
	data, err := readData(c, "secret")
	if err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		ctx, cancel := rpcContext(c)
		defer cancel()
		resp, err := cl.CreateSecret(ctx, &api.CreateSecretRequest{Spec: &api.SecretSpec{Annotations: ann, Data: data}})
		if err != nil {
			return err
		}
		fmt.Fprintln(c.App.Writer, resp.Secret.ID)
		return nil
	})
}

func secretList(c *cli.Context) error {
	l, err := newLister(c)
	if err != nil {
		return err
	}
	if err := noArgs(c); err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		ctx, cancel := rpcContext(c)
		defer cancel()
		resp, err := cl.ListSecrets(ctx, &api.ListSecretsRequest{})
		if err != nil {
			return err
		}
		return printNamedObjects(c, l, resp.Secrets)
	})
}

func secretInspect(c *cli.Context) error {
	if err := minArgs(c, 1, "SECRET..."); err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		return inspectEach(c, func(ref string) (proto.Message, error) {
			ctx, cancel := rpcContext(c)
			defer cancel()
			resp, err := cl.GetSecret(ctx, &api.GetSecretRequest{SecretID: ref})
			if err != nil {
				return nil, cl.explain(err)
			}
			if resp.Secret == nil {
				return nil, errors.New("the manager returned no secret for " + ref)
			}
			return redacted(resp.Secret), nil
		})
	})
}

func secretRemove(c *cli.Context) error {
	if err := minArgs(c, 1, "SECRET..."); err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		return forEach(c, func(ref string) (string, error) {
			ctx, cancel := rpcContext(c)
			defer cancel()
			if _, err := cl.RemoveSecret(ctx, &api.RemoveSecretRequest{SecretID: ref}); err != nil {
				return "", cl.explain(err)
			}
			return ref, nil
		})
	})
}
