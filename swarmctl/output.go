package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gogo/protobuf/jsonpb"
	"github.com/gogo/protobuf/proto"
	"github.com/gogo/protobuf/types"
	"github.com/urfave/cli/v2"

	"github.com/flotilla/flotilla/api"
)

// Output formats of ls.
const (
	formatTable = "table"
	formatJSON  = "json"
)

// listFlags are the flags every ls takes.
func listFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only IDs, one a line"},
		&cli.StringFlag{Name: "format", Value: formatTable, Usage: "output format: table or json"},
	}
}

// listFormat validates --format.
func listFormat(c *cli.Context) (string, error) {
	switch f := c.String("format"); f {
	case formatTable, formatJSON:
		return f, nil
	default:
		return "", fmt.Errorf("--format: invalid value %q: expected table or json", f)
	}
}

// lister prints the result of an ls: IDs (-q), a JSON array, or a table.
type lister struct {
	quiet  bool
	format string
}

func newLister(c *cli.Context) (lister, error) {
	f, err := listFormat(c)
	if err != nil {
		return lister{}, err
	}
	return lister{quiet: c.Bool("quiet"), format: f}, nil
}

// print writes objs; header and row give the table form.
func (l lister) print(w io.Writer, objs []proto.Message, ids []string, header []string, rows [][]string) error {
	switch {
	case l.quiet:
		for _, id := range ids {
			fmt.Fprintln(w, id)
		}
		return nil
	case l.format == formatJSON:
		return writeJSONArray(w, objs)
	default:
		return writeTable(w, header, rows)
	}
}

// redacted drops what is never printed (secret data, the CA and unlock keys,
// registry credentials) by the rules the manager applies before answering:
// defence in depth against a manager that did not.
func redacted[T api.StoreObject](o T) T {
	return api.Redacted(o).(T)
}

// writeTable prints aligned columns.
func writeTable(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// marshaler renders API objects in the protobuf JSON mapping: lowerCamelCase
// names, enums by name, defaults omitted.
var marshaler = jsonpb.Marshaler{}

// marshalJSON renders one object compactly; the writers indent.
func marshalJSON(m proto.Message) (json.RawMessage, error) {
	var buf bytes.Buffer
	if err := marshaler.Marshal(&buf, m); err != nil {
		return nil, fmt.Errorf("cannot render %T as JSON: %w", m, err)
	}
	return buf.Bytes(), nil
}

// writeJSONArray prints objs as one JSON array ("[]" when empty).
func writeJSONArray(w io.Writer, objs []proto.Message) error {
	raws := make([]json.RawMessage, 0, len(objs))
	for _, o := range objs {
		raw, err := marshalJSON(o)
		if err != nil {
			return err
		}
		raws = append(raws, raw)
	}
	out, err := json.MarshalIndent(raws, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", out)
	return err
}

// writeJSONObject prints one object.
func writeJSONObject(w io.Writer, obj proto.Message) error {
	raw, err := marshalJSON(obj)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err = w.Write(buf.Bytes())
	return err
}

// writeInspect prints the objects an inspect found: one object when one was
// asked for, else an array.
func writeInspect(w io.Writer, objs []proto.Message, asked int) error {
	if asked == 1 && len(objs) == 1 {
		return writeJSONObject(w, objs[0])
	}
	return writeJSONArray(w, objs)
}

// inspectEach gets every argument with get, prints what was found and
// reports each failure on its own line. It fails if any argument failed.
func inspectEach(c *cli.Context, get func(ref string) (proto.Message, error)) error {
	args := c.Args().Slice()
	var found []proto.Message
	failed := false
	for _, ref := range args {
		obj, err := get(ref)
		if isUnreachable(err) {
			return err
		}
		if err != nil {
			fmt.Fprintln(c.App.ErrWriter, "Error: "+errorMessage(err))
			failed = true
			continue
		}
		found = append(found, obj)
	}
	if len(found) > 0 || !failed {
		if err := writeInspect(c.App.Writer, found, len(args)); err != nil {
			return err
		}
	}
	if failed {
		return errReported
	}
	return nil
}

// forEach runs fn for every argument, printing the argument when fn
// succeeds and the error otherwise; it fails if any argument failed.
func forEach(c *cli.Context, fn func(ref string) (string, error)) error {
	failed := false
	for _, ref := range c.Args().Slice() {
		out, err := fn(ref)
		if isUnreachable(err) {
			return err
		}
		if err != nil {
			fmt.Fprintln(c.App.ErrWriter, "Error: "+errorMessage(err))
			failed = true
			continue
		}
		fmt.Fprintln(c.App.Writer, out)
	}
	if failed {
		return errReported
	}
	return nil
}

// pretty turns an enum name like ROLLBACK_STARTED into "Rollback started",
// as Docker shows states.
func pretty(enumName string) string {
	s := strings.ToLower(strings.ReplaceAll(enumName, "_", " "))
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// humanDuration says how long d is the way Docker does ("3 minutes").
func humanDuration(d time.Duration) string {
	if seconds := int(d.Seconds()); seconds < 1 {
		return "Less than a second"
	} else if seconds == 1 {
		return "1 second"
	} else if seconds < 60 {
		return fmt.Sprintf("%d seconds", seconds)
	} else if minutes := int(d.Minutes()); minutes == 1 {
		return "About a minute"
	} else if minutes < 60 {
		return fmt.Sprintf("%d minutes", minutes)
	} else if hours := int(d.Hours() + 0.5); hours == 1 {
		return "About an hour"
	} else if hours < 48 {
		return fmt.Sprintf("%d hours", hours)
	} else if hours < 24*7*2 {
		return fmt.Sprintf("%d days", hours/24)
	} else if hours < 24*30*2 {
		return fmt.Sprintf("%d weeks", hours/24/7)
	} else if hours < 24*365*2 {
		return fmt.Sprintf("%d months", hours/24/30)
	}
	return fmt.Sprintf("%d years", int(d.Hours())/24/365)
}

// ago says how long before now ts was ("3 minutes ago"); empty without ts.
func ago(ts *types.Timestamp, now time.Time) string {
	if ts == nil {
		return ""
	}
	t, err := types.TimestampFromProto(ts)
	if err != nil {
		return ""
	}
	return strings.ToLower(humanDuration(now.Sub(t))) + " ago"
}

// timeOf converts a timestamp for sorting; the zero time without one.
func timeOf(ts *types.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	t, err := types.TimestampFromProto(ts)
	if err != nil {
		return time.Time{}
	}
	return t
}

// printNamedObjects lists objects that have only a name and dates to show
// (secrets, configs), sorted by name, redacted.
func printNamedObjects[T api.StoreObject](c *cli.Context, l lister, list []T) error {
	sort.Slice(list, func(i, j int) bool {
		if a, b := list[i].GetName(), list[j].GetName(); a != b {
			return a < b
		}
		return list[i].GetID() < list[j].GetID()
	})
	now := time.Now()
	objs := make([]proto.Message, len(list))
	ids := make([]string, len(list))
	rows := make([][]string, len(list))
	for i, o := range list {
		meta := o.GetMeta()
		objs[i], ids[i] = api.Redacted(o).(proto.Message), o.GetID()
		rows[i] = []string{o.GetID(), o.GetName(), ago(meta.CreatedAt, now), ago(meta.UpdatedAt, now)}
	}
	return l.print(c.App.Writer, objs, ids, []string{"ID", "NAME", "CREATED", "UPDATED"}, rows)
}
