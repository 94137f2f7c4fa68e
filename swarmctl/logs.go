package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gogo/protobuf/types"
	"github.com/urfave/cli/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// service logs SERVICE and task logs TASK: the tasks' output through the
// leader's log broker (api.Logs). Each line is printed as Docker does:
//
//	<service>.<slot>.<task ID>@<node hostname>    | <line>
//
// (a global service's tasks show the node ID instead of the slot), stdout
// lines on stdout and stderr lines on stderr; notices (a node that is down)
// go to stderr as "Warning: ...".

// logsTaskIDLen is how much of a task ID the prefix shows without --no-trunc.
const logsTaskIDLen = 12

func logsFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing new log lines (Ctrl-C ends)"},
		&cli.StringFlag{Name: "tail", Value: "all", Usage: "`N` last lines of each task, or all"},
		&cli.StringFlag{Name: "since", Usage: "only lines since `D|TIME`: a duration back from now (10m, 1h30m) or an RFC 3339 time"},
		&cli.BoolFlag{Name: "timestamps", Aliases: []string{"t"}, Usage: "print each line's time (RFC 3339, UTC)"},
		&cli.BoolFlag{Name: "no-task-ids", Usage: "leave task IDs out of the line prefix"},
		&cli.BoolFlag{Name: "no-trunc", Usage: "print whole task IDs"},
		&cli.BoolFlag{Name: "raw", Usage: "print the lines only, without the prefix"},
	}
}

func serviceLogs(c *cli.Context) error {
	if err := exactArgs(c, 1, "SERVICE"); err != nil {
		return err
	}
	return logsCommand(c, func(cl *client, f *logFormatter) (*api.LogSelector, error) {
		svc, err := getService(c, cl, c.Args().First())
		if err != nil {
			return nil, err
		}
		f.services[svc.ID] = svc.Spec.Annotations.Name
		ctx, cancel := rpcContext(c)
		defer cancel()
		resp, err := cl.ListTasks(ctx, &api.ListTasksRequest{Filters: &api.ListTasksRequest_Filters{ServiceIDs: []string{svc.ID}}})
		if err != nil {
			return nil, cl.explain(err)
		}
		for _, t := range resp.Tasks {
			f.addTask(t)
		}
		return &api.LogSelector{ServiceIDs: []string{svc.ID}}, nil
	})
}

func taskLogs(c *cli.Context) error {
	if err := exactArgs(c, 1, "TASK"); err != nil {
		return err
	}
	return logsCommand(c, func(cl *client, f *logFormatter) (*api.LogSelector, error) {
		ctx, cancel := rpcContext(c)
		defer cancel()
		resp, err := cl.GetTask(ctx, &api.GetTaskRequest{TaskID: c.Args().First()})
		if err != nil {
			return nil, cl.explain(err)
		}
		f.addTask(resp.Task)
		if f.services[resp.Task.ServiceID] == "" {
			if svc, err := getService(c, cl, resp.Task.ServiceID); err == nil {
				f.services[svc.ID] = svc.Spec.Annotations.Name
			}
		}
		return &api.LogSelector{TaskIDs: []string{resp.Task.ID}}, nil
	})
}

// logOptions reads the flags.
func logOptions(c *cli.Context, now time.Time) (*api.LogSubscriptionOptions, error) {
	o := &api.LogSubscriptionOptions{Follow: c.Bool("follow")}
	switch tail := strings.TrimSpace(c.String("tail")); tail {
	case "all", "":
	case "0":
		o.Tail = -1 // nothing of the past
	default:
		n, err := strconv.ParseInt(tail, 10, 64)
		if err != nil || n < 0 {
			return nil, invalid("tail", tail, "a number of lines (0 or more) or all")
		}
		o.Tail = n
	}
	if v := strings.TrimSpace(c.String("since")); v != "" {
		t, err := parseSince(v, now)
		if err != nil {
			return nil, invalid("since", v, "a duration such as 10m or 2h, or a time such as 2025-01-02T15:04:05Z")
		}
		if o.Since, err = types.TimestampProto(t); err != nil {
			return nil, invalid("since", v, "a time after 1970")
		}
	}
	return o, nil
}

// parseSince reads a duration back from now, an RFC 3339 time, or a date.
func parseSince(v string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, nil
		}
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil && secs >= 0 {
		return time.Unix(secs, 0), nil
	}
	return time.Time{}, errors.New("not a duration or time")
}

// logsCommand subscribes to what selector returns and prints until the
// stream ends, or Ctrl-C with --follow.
func logsCommand(c *cli.Context, selector func(*client, *logFormatter) (*api.LogSelector, error)) error {
	opts, err := logOptions(c, time.Now())
	if err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		f := newLogFormatter(c)
		sel, err := selector(cl, f)
		if err != nil {
			return err
		}
		if !f.raw {
			f.prepare(c, cl)
		}
		ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
		defer stop()
		stream, err := api.NewLogsClient(cl.conn).SubscribeLogs(ctx, &api.SubscribeLogsRequest{Selector: sel, Options: opts})
		if err != nil {
			return cl.explain(err)
		}
		out := bufio.NewWriter(c.App.Writer)
		errOut := bufio.NewWriter(c.App.ErrWriter)
		defer out.Flush()
		defer errOut.Flush()
		var lines int
		down := map[string]bool{} // nodes reported as a whole
		for {
			m, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil // Ctrl-C
				}
				if status.Code(err) == codes.Unimplemented {
					return errors.New("this manager does not serve task logs (an older swarmd?)")
				}
				return cl.explain(err)
			}
			for _, lm := range m.Messages {
				w := out
				if lm.Stream == api.LogStreamStderr {
					w = errOut
				}
				f.write(c, cl, w, lm)
				lines++
			}
			for _, n := range m.Notices {
				fmt.Fprintf(errOut, "Warning: %s\n", n.Message)
				if n.TaskID == "" && n.NodeID != "" {
					down[n.NodeID] = true
				}
			}
			out.Flush()
			errOut.Flush()
		}
		if lines == 0 && f.allNodesIn(down) {
			return errors.New("no logs could be read: every node that runs these tasks is down or unreachable")
		}
		return nil
	})
}

// logFormatter makes the line prefixes, looking up names it lacks.
type logFormatter struct {
	services  map[string]string // ID -> name
	tasks     map[string]*api.Task
	nodes     map[string]string // ID -> hostname
	taskNodes map[string]bool   // nodes the known tasks are on
	width     int               // of the widest prefix so far, for alignment

	timestamps, noTaskIDs, noTrunc, raw bool
}

func newLogFormatter(c *cli.Context) *logFormatter {
	return &logFormatter{
		services:   map[string]string{},
		tasks:      map[string]*api.Task{},
		nodes:      map[string]string{},
		taskNodes:  map[string]bool{},
		timestamps: c.Bool("timestamps"),
		noTaskIDs:  c.Bool("no-task-ids"),
		noTrunc:    c.Bool("no-trunc"),
		raw:        c.Bool("raw"),
	}
}

func (f *logFormatter) addTask(t *api.Task) {
	f.tasks[t.ID] = t
	if t.NodeID != "" {
		f.taskNodes[t.NodeID] = true
	}
	if name := t.ServiceAnnotations.Name; name != "" && f.services[t.ServiceID] == "" {
		f.services[t.ServiceID] = name
	}
}

// allNodesIn reports whether every node of the known tasks is in set (and
// there is at least one).
func (f *logFormatter) allNodesIn(set map[string]bool) bool {
	if len(f.taskNodes) == 0 {
		return false
	}
	for id := range f.taskNodes {
		if !set[id] {
			return false
		}
	}
	return true
}

// prepare reads the nodes' hostnames and sets the prefix width from the
// tasks known so far.
func (f *logFormatter) prepare(c *cli.Context, cl *client) {
	ctx, cancel := rpcContext(c)
	defer cancel()
	if resp, err := cl.ListNodes(ctx, &api.ListNodesRequest{}); err == nil {
		for _, n := range resp.Nodes {
			f.addNode(n)
		}
	}
	for _, t := range f.tasks {
		if t.NodeID != "" {
			f.width = max(f.width, len(f.prefix(api.LogContext{ServiceID: t.ServiceID, NodeID: t.NodeID, TaskID: t.ID})))
		}
	}
}

func (f *logFormatter) addNode(n *api.Node) {
	host := n.ID
	if n.Description != nil && n.Description.Hostname != "" {
		host = n.Description.Hostname
	}
	f.nodes[n.ID] = host
}

// lookup reads the task and node of a line if they are new.
func (f *logFormatter) lookup(c *cli.Context, cl *client, lc api.LogContext) {
	if f.tasks[lc.TaskID] == nil {
		ctx, cancel := rpcContext(c)
		if resp, err := cl.GetTask(ctx, &api.GetTaskRequest{TaskID: lc.TaskID}); err == nil {
			f.addTask(resp.Task)
		}
		cancel()
	}
	if _, ok := f.nodes[lc.NodeID]; !ok {
		f.nodes[lc.NodeID] = lc.NodeID
		ctx, cancel := rpcContext(c)
		if resp, err := cl.GetNode(ctx, &api.GetNodeRequest{NodeID: lc.NodeID}); err == nil {
			f.addNode(resp.Node)
		}
		cancel()
	}
}

// prefix is "<service>.<slot>.<task>@<node>" for a line's context.
func (f *logFormatter) prefix(lc api.LogContext) string {
	service := f.services[lc.ServiceID]
	if service == "" {
		service = lc.ServiceID
	}
	host := f.nodes[lc.NodeID]
	if host == "" {
		host = lc.NodeID
	}
	slot := lc.NodeID // global services: the node stands for the slot
	if t := f.tasks[lc.TaskID]; t != nil && t.Slot != 0 {
		slot = strconv.FormatUint(t.Slot, 10)
	}
	taskID := lc.TaskID
	if !f.noTrunc && len(taskID) > logsTaskIDLen {
		taskID = taskID[:logsTaskIDLen]
	}
	if f.noTaskIDs {
		return fmt.Sprintf("%s.%s@%s", service, slot, host)
	}
	return fmt.Sprintf("%s.%s.%s@%s", service, slot, taskID, host)
}

func (f *logFormatter) write(c *cli.Context, cl *client, w io.Writer, lm *api.LogMessage) {
	data := strings.TrimSuffix(string(lm.Data), "\n")
	if f.raw {
		fmt.Fprintln(w, data)
		return
	}
	var ts string
	if f.timestamps {
		// Fixed width, so that the prefixes line up.
		ts = timeOf(lm.Timestamp).UTC().Format("2006-01-02T15:04:05.000000000Z07:00") + " "
	}
	f.lookup(c, cl, lm.Context)
	p := f.prefix(lm.Context)
	f.width = max(f.width, len(p))
	fmt.Fprintf(w, "%s%-*s    | %s\n", ts, f.width, p, data)
}
