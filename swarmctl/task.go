package main

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/gogo/protobuf/proto"
	"github.com/urfave/cli/v2"

	"github.com/flotilla/flotilla/api"
)

func taskCommand() *cli.Command {
	return &cli.Command{
		Name:  "task",
		Usage: "inspect and remove tasks",
		Subcommands: []*cli.Command{
			{
				Name:  "ls",
				Usage: "list tasks, newest first within each slot",
				Flags: append(listFlags(),
					&cli.StringFlag{Name: "service", Usage: "only the tasks of `SERVICE`"},
					&cli.StringFlag{Name: "node", Usage: "only the tasks on `NODE`"},
					&cli.StringFlag{Name: "desired-state", Usage: "only tasks with this desired `STATE`: running, shutdown, accepted (or any task state)"},
				),
				Action: taskList,
			},
			{
				Name:      "inspect",
				Usage:     "print tasks as JSON",
				ArgsUsage: "TASK...",
				Action:    taskInspect,
			},
			{
				Name:      "logs",
				Usage:     "print the logs of a task",
				ArgsUsage: "TASK",
				Flags:     logsFlags(),
				Action:    taskLogs,
			},
			{
				Name:      "rm",
				Aliases:   []string{"remove"},
				Usage:     "remove tasks",
				ArgsUsage: "TASK...",
				Action:    taskRemove,
			},
		},
	}
}

// parseTaskState reads a task state name in any case ("running").
func parseTaskState(flag, v string) (api.TaskState, error) {
	n, ok := api.TaskState_value[strings.ToUpper(strings.TrimSpace(v))]
	if !ok {
		return 0, invalid(flag, v, "running, shutdown, accepted or another task state")
	}
	return api.TaskState(n), nil
}

func taskList(c *cli.Context) error {
	l, err := newLister(c)
	if err != nil {
		return err
	}
	if err := noArgs(c); err != nil {
		return err
	}
	filters := &api.ListTasksRequest_Filters{}
	if c.IsSet("desired-state") {
		st, err := parseTaskState("desired-state", c.String("desired-state"))
		if err != nil {
			return err
		}
		filters.DesiredStates = []api.TaskState{st}
	}
	return withClient(c, func(cl *client) error {
		if ref := c.String("service"); ref != "" {
			s, err := getService(c, cl, ref)
			if err != nil {
				return err
			}
			filters.ServiceIDs = []string{s.ID}
		}
		if ref := c.String("node"); ref != "" {
			n, err := getNode(c, cl, ref)
			if err != nil {
				return err
			}
			filters.NodeIDs = []string{n.ID}
		}
		return listTasks(c, cl, l, filters)
	})
}

// listTasks prints the tasks that match filters, ordered by taskRows.
func listTasks(c *cli.Context, cl *client, l lister, filters *api.ListTasksRequest_Filters) error {
	ctx, cancel := rpcContext(c)
	defer cancel()
	resp, err := cl.ListTasks(ctx, &api.ListTasksRequest{Filters: filters})
	if err != nil {
		return err
	}
	rows := taskRows(resp.Tasks)
	nodeNames := map[string]string{}
	if !l.quiet && l.format == formatTable && len(rows) > 0 {
		nresp, err := cl.ListNodes(ctx, &api.ListNodesRequest{})
		if err != nil {
			return err
		}
		for _, n := range nresp.Nodes {
			nodeNames[n.ID] = nodeHostname(n)
		}
	}
	objs := make([]proto.Message, len(rows))
	ids := make([]string, len(rows))
	for i, r := range rows {
		objs[i], ids[i] = redacted(r.task), r.task.ID
	}
	return l.print(c.App.Writer, objs, ids,
		[]string{"ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"},
		taskTable(rows, nodeNames, time.Now()))
}

// taskRow is a task in the order ps shows them; history rows are older
// tasks of the slot above them.
type taskRow struct {
	task    *api.Task
	name    string
	history bool
}

// slotKey groups the tasks of one slot: service and slot for replicated
// services, service and node for global ones.
func slotKey(t *api.Task) string {
	if t.Slot != 0 {
		return fmt.Sprintf("%s/%d", t.ServiceID, t.Slot)
	}
	return t.ServiceID + "/" + t.NodeID
}

// created is when a task was made: its creation time, else its last status.
func created(t *api.Task) time.Time {
	if t.Meta.CreatedAt != nil {
		return timeOf(t.Meta.CreatedAt)
	}
	return timeOf(t.Status.Timestamp)
}

// taskRows orders tasks as Docker's ps does: by service name, then slot
// (node for global services), newest first within a slot; every task after
// the first of its slot is history and its name is prefixed with ` \_ `.
func taskRows(tasks []*api.Task) []taskRow {
	sorted := append([]*api.Task(nil), tasks...)
	sort.SliceStable(sorted, func(i, j int) bool {
		a, b := sorted[i], sorted[j]
		if x, y := a.ServiceAnnotations.Name, b.ServiceAnnotations.Name; x != y {
			return x < y
		}
		if a.ServiceID != b.ServiceID {
			return a.ServiceID < b.ServiceID
		}
		if a.Slot != b.Slot {
			return a.Slot < b.Slot
		}
		if a.Slot == 0 && a.NodeID != b.NodeID {
			return a.NodeID < b.NodeID
		}
		if ta, tb := created(a), created(b); !ta.Equal(tb) {
			return ta.After(tb)
		}
		return a.ID < b.ID
	})
	rows := make([]taskRow, len(sorted))
	for i, t := range sorted {
		name := t.GetName()
		if name == "" {
			name = t.ID
		}
		history := i > 0 && slotKey(sorted[i-1]) == slotKey(t)
		if history {
			name = ` \_ ` + name
		}
		rows[i] = taskRow{task: t, name: name, history: history}
	}
	return rows
}

// taskTable renders rows; nodeNames maps node IDs to hostnames.
func taskTable(rows []taskRow, nodeNames map[string]string, now time.Time) [][]string {
	out := make([][]string, len(rows))
	for i, r := range rows {
		t := r.task
		node := nodeNames[t.NodeID]
		if node == "" {
			node = t.NodeID
		}
		current := pretty(t.Status.State.String())
		if since := ago(t.Status.Timestamp, now); since != "" {
			current += " " + since
		}
		if h := healthLabel(t.Status.Health); h != "" && t.Status.State == api.TaskStateRunning {
			current += " " + h
		}
		// The error, or for a task that cannot be placed the reason why, as
		// Docker shows it.
		why := t.Status.Err
		if why == "" && t.Status.State == api.TaskStatePending {
			why = t.Status.Message
		}
		errCol := ""
		if why != "" {
			errCol = `"` + strings.Join(strings.Fields(why), " ") + `"`
		}
		// The ports the task publishes on its node, as its agent reported them.
		ports := ""
		if ps := t.Status.PortStatus; ps != nil {
			ports = formatPorts(ps.Ports, false)
		}
		out[i] = []string{t.ID, r.name, imageColumn(t.Spec.Container), node, pretty(t.DesiredState.String()), current, errCol, ports}
	}
	return out
}

// healthLabel shows a running task's health as `docker ps` shows a
// container's; empty without a health check.
func healthLabel(h api.HealthState) string {
	switch h {
	case api.HealthStarting:
		return "(health: starting)"
	case api.HealthHealthy:
		return "(healthy)"
	case api.HealthUnhealthy:
		return "(unhealthy)"
	}
	return ""
}

func taskInspect(c *cli.Context) error {
	if err := minArgs(c, 1, "TASK..."); err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		return inspectEach(c, func(ref string) (proto.Message, error) {
			ctx, cancel := rpcContext(c)
			defer cancel()
			resp, err := cl.GetTask(ctx, &api.GetTaskRequest{TaskID: ref})
			if err != nil {
				return nil, cl.explain(err)
			}
			return redacted(resp.Task), nil
		})
	})
}

func taskRemove(c *cli.Context) error {
	if err := minArgs(c, 1, "TASK..."); err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		return forEach(c, func(ref string) (string, error) {
			ctx, cancel := rpcContext(c)
			defer cancel()
			if _, err := cl.RemoveTask(ctx, &api.RemoveTaskRequest{TaskID: ref}); err != nil {
				return "", cl.explain(err)
			}
			return ref, nil
		})
	})
}
