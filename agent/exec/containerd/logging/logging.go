// Package logging keeps a container's stdout and stderr in bounded, rotated
// files on the node, written by a logging process of containerd's runc
// shim, and reads them back (tail, since, follow).
//
// # The logger
//
// The containerd executor runs each task with containerd's binary logging:
//
//	task, err := container.NewTask(ctx, cio.BinaryIO(self, logging.ShimArgs(dir, logging.Options{})))
//
// where self is the absolute path of the running swarmd (os.Executable).
// For each task the shim then starts `self ARGS...` with the container's
// stdout on fd 3, its stderr on fd 4 and fd 5 a pipe to close once ready;
// its environment holds CONTAINER_ID and CONTAINER_NAMESPACE only, and
// ARGS are ShimArgs' pairs as `key value`, in random order. swarmd's main
// (and the TestMain of a test binary that plays the logger) starts with
//
//	if logging.Invoked(os.Args[1:]) {
//		os.Exit(logging.Main(os.Args[1:]))
//	}
//
// The logger is the shim's child, not swarmd's: it goes on writing while
// swarmd is down or restarting, and a container never blocks on a full
// pipe because swarmd is not reading. It exits when both streams are at
// end of file, which happens when the shim closes its ends of the pipes:
// when the containerd task is deleted (task.Delete), not when its process
// exits. The shim also sends SIGTERM then (and SIGKILL 12s later); the
// logger drains what is left, closes the file and exits. If it cannot
// write (dir not creatable, disk full), it still reads and drops the
// output so the container does not block or die of SIGPIPE, and leaves the
// reason in DIR/logger-error.
//
// # Files
//
// DIR/container.log is the current file; DIR/container.log.1 ...
// .log.(MaxFiles-1) are older ones, .1 the newest of them. When a record
// would take the current file past MaxFileBytes, the files shift by one
// (the oldest is deleted) and a new current file starts. So a container
// keeps at most MaxFiles*MaxFileBytes of logs (plus one record).
//
// Each line of a file is one record, JSON like Docker's json-file driver
// but shorter:
//
//	{"t":"2024-01-01T00:00:00.123456789Z","s":"stdout","l":"the line, without its newline"}
//
// t is when the logger read the line (RFC 3339, nanoseconds, UTC); s is
// "stdout" or "stderr". A line that is not valid UTF-8 is kept exactly as
// "b" (base64) instead of "l". A line longer than MaxLineBytes (16 KiB) is
// split into several records, all but the last marked "p":true (partial).
// A record is written with a single write(2), so a crash mid-write leaves
// at most one torn last line: the reader skips lines it cannot parse, and
// a logger that opens a file not ending in a newline ends the torn line
// first.
//
// When the logger exits it creates DIR/closed (and removes it when it
// starts), so a reader that follows the log of a task that has ended
// returns instead of waiting forever.
package logging

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

const (
	// DefaultMaxFileBytes is the default size of one log file.
	DefaultMaxFileBytes = 10 << 20
	// DefaultMaxFiles is the default number of log files (current and
	// rotated) of a container.
	DefaultMaxFiles = 3
	// MaxLineBytes is the longest line kept in one record; longer lines
	// are split.
	MaxLineBytes = 16 << 10
)

// File names in a log dir.
const (
	currentFile = "container.log"
	closedFile  = "closed"
	errorFile   = "logger-error"
)

// Argument keys of the logger (ShimArgs). The marker is deliberately unlike
// any swarmd flag.
const (
	argMarker       = "--flotilla-task-logger"
	argMaxFileBytes = "--flotilla-max-file-bytes"
	argMaxFiles     = "--flotilla-max-files"
)

// Options bound a container's logs.
type Options struct {
	// MaxFileBytes is the size at which the current file is rotated
	// (default 10 MiB).
	MaxFileBytes int64
	// MaxFiles is how many files are kept, the current one included
	// (default 3; 1 keeps only the current file, emptied at rotation).
	MaxFiles int
}

func (o Options) withDefaults() Options {
	if o.MaxFileBytes <= 0 {
		o.MaxFileBytes = DefaultMaxFileBytes
	}
	if o.MaxFiles <= 0 {
		o.MaxFiles = DefaultMaxFiles
	}
	return o
}

// Stream is the output a line came from. Its values are those of
// exec.LogStream.
type Stream int

const (
	// Stdout is the container's standard output.
	Stdout Stream = 1
	// Stderr is the container's standard error.
	Stderr Stream = 2
)

func (s Stream) String() string {
	switch s {
	case Stdout:
		return "stdout"
	case Stderr:
		return "stderr"
	}
	return "stream(" + strconv.Itoa(int(s)) + ")"
}

// Entry is one record of a log.
type Entry struct {
	// Time is when the logger read the line.
	Time   time.Time
	Stream Stream
	// Line is the line without its newline (or a piece of a long line).
	Line []byte
	// Partial says the line goes on in the next entry of the same stream.
	Partial bool
}

// ShimArgs are the arguments for cio.BinaryIO that make the binary (swarmd,
// or a test binary with the TestMain hook) the logger of a task, writing
// into dir (absolute; created if missing).
func ShimArgs(dir string, opts Options) map[string]string {
	opts = opts.withDefaults()
	return map[string]string{
		argMarker:       dir,
		argMaxFileBytes: strconv.FormatInt(opts.MaxFileBytes, 10),
		argMaxFiles:     strconv.Itoa(opts.MaxFiles),
	}
}

// Invoked says whether args (os.Args[1:]) are a logger's: key-value pairs,
// one of whose keys is the logger's marker.
func Invoked(args []string) bool {
	if len(args)%2 != 0 {
		return false
	}
	for i := 0; i < len(args); i += 2 {
		if args[i] == argMarker {
			return true
		}
	}
	return false
}

// parseArgs reads the logger's key-value pairs, in any order.
func parseArgs(args []string) (dir string, opts Options, err error) {
	if len(args)%2 != 0 {
		return "", opts, fmt.Errorf("logger arguments must be key-value pairs, got %d", len(args))
	}
	for i := 0; i < len(args); i += 2 {
		k, v := args[i], args[i+1]
		switch k {
		case argMarker:
			dir = v
		case argMaxFileBytes:
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				return "", opts, fmt.Errorf("%s %q: want a positive number of bytes", k, v)
			}
			opts.MaxFileBytes = n
		case argMaxFiles:
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return "", opts, fmt.Errorf("%s %q: want a positive number of files", k, v)
			}
			opts.MaxFiles = n
		default:
			// Unknown keys are ignored: a newer swarmd may pass more to
			// a logger started by an older one's shim, or the reverse.
		}
	}
	if dir == "" || !filepath.IsAbs(dir) {
		return "", opts, fmt.Errorf("%s %q: want an absolute directory", argMarker, dir)
	}
	return dir, opts.withDefaults(), nil
}

// fileName is the name of the i-th file of a log dir: 0 the current one,
// i > 0 the i-th newest rotated one.
func fileName(dir string, i int) string {
	if i == 0 {
		return filepath.Join(dir, currentFile)
	}
	return filepath.Join(dir, currentFile+"."+strconv.Itoa(i))
}

// Closed says whether the logger of dir has finished (DIR/closed exists).
func Closed(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, closedFile))
	return err == nil
}
