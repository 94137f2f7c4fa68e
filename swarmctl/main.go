// Command swarmctl is the command-line client of Flotilla. It talks to the
// control API of a manager (swarmd) over the manager's unix socket.
//
// The commands, flags and JSON field names are a contract (see
// cli-contract.md); scripts depend on them.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// version is the client's version, set at build time with
// -ldflags "-X main.version=v1.2.3".
var version = "dev"

const (
	defaultSocket = "/var/lib/swarmd/swarmd.sock"
	// rpcTimeout bounds every unary call.
	rpcTimeout = 30 * time.Second
)

func main() {
	os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr))
}

// run executes one command line and returns the process exit status.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	app := newApp(stdin, stdout, stderr)
	err := app.Run(args)
	if err == nil {
		return 0
	}
	if !errors.Is(err, errReported) {
		fmt.Fprintln(stderr, "Error: "+errorMessage(err))
	}
	return 1
}

// errReported is returned by commands that already printed their errors
// (one per failed argument) and only need a non-zero exit status.
var errReported = errors.New("errors reported")

func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:  "swarmctl",
		Usage: "control a Flotilla cluster",
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "socket",
				Usage:   "unix socket of a manager's control API",
				EnvVars: []string{"SWARM_SOCKET"},
				Value:   defaultSocket,
			},
		},
		Commands: []*cli.Command{
			nodeCommand(),
			serviceCommand(),
			taskCommand(),
			clusterCommand(),
			networkCommand(),
			secretCommand(),
			configCommand(),
			stackCommand(),
			{
				Name:  "version",
				Usage: "print the client's version",
				Action: func(c *cli.Context) error {
					if err := noArgs(c); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "swarmctl version %s\n", version)
					return nil
				},
			},
		},
		// Flags like --mount type=bind,source=a,target=b hold commas: never split them.
		DisableSliceFlagSeparator: true,
		HideVersion:               true,
		Reader:                    stdin,
		Writer:                    stdout,
		ErrWriter:                 stderr,
		// Errors are printed once, by run.
		ExitErrHandler: func(*cli.Context, error) {},
		Action:         unknownSubcommand,
	}
	setUsageErrors(app.Commands)
	app.OnUsageError = usageError
	return app
}

// setUsageErrors makes every command report bad flags as one line (urfave
// would print the whole help text) and refuse unknown subcommands.
func setUsageErrors(cmds []*cli.Command) {
	for _, c := range cmds {
		c.OnUsageError = usageError
		if len(c.Subcommands) > 0 {
			if c.Action == nil {
				c.Action = unknownSubcommand
			}
			setUsageErrors(c.Subcommands)
		}
	}
}

func usageError(c *cli.Context, err error, _ bool) error {
	return fmt.Errorf("%v (see '%s --help')", err, helpName(c))
}

func helpName(c *cli.Context) string {
	if c.Command != nil && c.Command.HelpName != "" {
		return c.Command.HelpName
	}
	return c.App.Name
}

// unknownSubcommand is the action of commands that only group subcommands:
// without arguments it shows the help, otherwise it refuses the argument.
func unknownSubcommand(c *cli.Context) error {
	if c.NArg() == 0 {
		return cli.ShowSubcommandHelp(c)
	}
	return fmt.Errorf("unknown command %q for %q (see '%s --help')", c.Args().First(), helpName(c), helpName(c))
}

// errorMessage is the one line shown for err: the message of a gRPC status
// (without the "rpc error: code = ..." decoration), else the error's text.
func errorMessage(err error) string {
	var unreachable *unreachableError
	if errors.As(err, &unreachable) {
		return unreachable.Error()
	}
	msg := err.Error()
	if se, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		msg = se.GRPCStatus().Message()
	}
	return strings.Join(strings.Fields(strings.ReplaceAll(msg, "\n", " ")), " ")
}

// describe prefixes an error with what was being done, keeping the gRPC
// status message readable ("--secret db: secret db not found").
func describe(prefix string, err error) error {
	var unreachable *unreachableError
	if errors.As(err, &unreachable) {
		return err
	}
	return fmt.Errorf("%s: %s", prefix, errorMessage(err))
}

// unreachableError says that nothing answers at the control socket.
type unreachableError struct {
	path  string
	cause error
}

func (e *unreachableError) Error() string {
	if errors.Is(e.cause, os.ErrPermission) {
		return fmt.Sprintf("cannot reach swarmd at %s: permission denied (run as a user who may use the socket)", e.path)
	}
	return fmt.Sprintf("cannot reach swarmd at %s: is swarmd running? (set --socket or SWARM_SOCKET)", e.path)
}

func (e *unreachableError) Unwrap() error { return e.cause }

// isUnreachable says whether err is that nothing answers at the socket; a
// command over many arguments then stops instead of failing each one.
func isUnreachable(err error) bool {
	var u *unreachableError
	return errors.As(err, &u)
}

// client is a connection to the control API.
type client struct {
	api.ControlClient
	conn *grpc.ClientConn
	path string
	// dialFailed records that the last dial of the socket failed, so that an
	// Unavailable error can be explained without reading its text.
	dialFailed atomic.Pointer[error]
}

// connect opens the control socket named by --socket / SWARM_SOCKET.
func connect(c *cli.Context) (*client, error) {
	path := c.String("socket")
	if path == "" {
		path = defaultSocket
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	if _, err := os.Stat(path); err != nil {
		return nil, &unreachableError{path: path, cause: err}
	}
	cl := &client{path: path}
	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			cl.dialFailed.Store(&err)
			return nil, err
		}
		cl.dialFailed.Store(nil)
		return conn, nil
	}
	conn, err := grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(api.MaxControlMessageBytes)),
	)
	if err != nil {
		return nil, fmt.Errorf("cannot use socket %s: %w", path, err)
	}
	cl.conn = conn
	cl.ControlClient = api.NewControlClient(conn)
	return cl, nil
}

// withClient runs fn with a connection that is closed afterwards.
func withClient(c *cli.Context, fn func(cl *client) error) error {
	cl, err := connect(c)
	if err != nil {
		return err
	}
	defer cl.conn.Close()
	return cl.explain(fn(cl))
}

// explain replaces the error of a call that failed because the socket could
// not be dialled with the message that tells the operator what to do.
func (cl *client) explain(err error) error {
	if err == nil || errors.Is(err, errReported) {
		return err
	}
	if p := cl.dialFailed.Load(); p != nil {
		cause := *p
		if errors.Is(cause, syscall.ECONNREFUSED) || errors.Is(cause, os.ErrNotExist) || errors.Is(cause, os.ErrPermission) {
			return &unreachableError{path: cl.path, cause: cause}
		}
	}
	return err
}

// rpcContext bounds one unary call.
func rpcContext(c *cli.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.Context, rpcTimeout)
}

// noArgs refuses positional arguments.
func noArgs(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see '%s --help')", c.Args().First(), helpName(c))
	}
	return nil
}

// exactArgs requires n positional arguments, named by what for the message.
// Flags placed after them are a common mistake: name it.
func exactArgs(c *cli.Context, n int, what string) error {
	if err := trailingFlag(c, n); err != nil {
		return err
	}
	if c.NArg() != n {
		return fmt.Errorf("%q requires exactly %d argument(s): %s (see '%s --help')", helpName(c), n, what, helpName(c))
	}
	return nil
}

// minArgs requires at least n positional arguments.
func minArgs(c *cli.Context, n int, what string) error {
	if err := trailingFlag(c, n); err != nil {
		return err
	}
	if c.NArg() < n {
		return fmt.Errorf("%q requires at least %d argument(s): %s (see '%s --help')", helpName(c), n, what, helpName(c))
	}
	return nil
}

// trailingFlag reports a flag given after the positional arguments, which
// urfave/cli would otherwise take as one more argument.
func trailingFlag(c *cli.Context, from int) error {
	args := c.Args().Slice()
	for i := from; i < len(args); i++ {
		if strings.HasPrefix(args[i], "-") && len(args[i]) > 1 {
			return fmt.Errorf("flag %s given after the arguments: flags go before them (see '%s --help')", args[i], helpName(c))
		}
	}
	return nil
}
