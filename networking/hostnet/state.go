//go:build linux

package hostnet

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/internal/atomicfile"
)

// recordVersion is the format of the attachment records.
const recordVersion = 1

// record is what StateDir/tasks/<task id>.json keeps of one attachment: all
// a restarted Manager needs to adopt it or to remove it.
type record struct {
	Version int          `json:"version"`
	TaskID  string       `json:"task_id"`
	Address netip.Prefix `json:"address"`
	Veth    string       `json:"veth"`
	Ports   []portRecord `json:"ports,omitempty"`
}

// portRecord is one host-mode published port as programmed.
type portRecord struct {
	Name      string `json:"name,omitempty"`
	Protocol  string `json:"protocol"`
	Target    uint16 `json:"target"`
	Published uint16 `json:"published"`
}

func (p portRecord) key() portKey { return portKey{p.Protocol, p.Published} }

func (p portRecord) config() *api.PortConfig {
	return &api.PortConfig{
		Name:          p.Name,
		Protocol:      protocolValue(p.Protocol),
		TargetPort:    uint32(p.Target),
		PublishedPort: uint32(p.Published),
		PublishMode:   api.PublishModeHost,
	}
}

// portKey is a host port: protocol and number.
type portKey struct {
	Protocol string
	Port     uint16
}

func (k portKey) String() string { return fmt.Sprintf("%d/%s", k.Port, k.Protocol) }

func protocolName(p api.PortConfig_Protocol) (string, error) {
	switch p {
	case api.ProtocolTCP:
		return "tcp", nil
	case api.ProtocolUDP:
		return "udp", nil
	case api.ProtocolSCTP:
		return "sctp", nil
	}
	return "", fmt.Errorf("unknown port protocol %d: want tcp, udp or sctp", p)
}

func protocolValue(name string) api.PortConfig_Protocol {
	switch name {
	case "udp":
		return api.ProtocolUDP
	case "sctp":
		return api.ProtocolSCTP
	}
	return api.ProtocolTCP
}

// stateStore keeps the records, one file per task, each written atomically.
type stateStore struct {
	dir string
}

const recordSuffix = ".json"

func (s stateStore) path(taskID string) string { return filepath.Join(s.dir, taskID+recordSuffix) }

// write replaces the task's record: temp file, fsync, rename, fsync of the
// directory, so a crash leaves the old record or the new one.
func (s stateStore) write(r *record) error {
	r.Version = recordVersion
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(s.path(r.TaskID), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write attachment record of task %s: %w", r.TaskID, err)
	}
	return nil
}

// remove deletes the task's record; a missing one is not an error.
func (s stateStore) remove(taskID string) error {
	err := os.Remove(s.path(taskID))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove attachment record of task %s: %w", taskID, err)
	}
	return atomicfile.SyncDir(s.dir)
}

// load reads every record. Left-over temp files (a crash during write) are
// removed. A record that cannot be read is an error: its address and ports
// would otherwise be handed out twice.
func (s stateStore) load() (map[string]*record, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("read attachment records: %w", err)
	}
	recs := make(map[string]*record, len(entries))
	for _, e := range entries {
		name := e.Name()
		if atomicfile.IsTemp(name) {
			_ = os.Remove(filepath.Join(s.dir, name))
			continue
		}
		taskID, ok := strings.CutSuffix(name, recordSuffix)
		if !ok || e.IsDir() {
			continue
		}
		p := filepath.Join(s.dir, name)
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read attachment record %s: %w", p, err)
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil || r.TaskID != taskID || r.Version != recordVersion || !r.Address.IsValid() {
			return nil, fmt.Errorf("attachment record %s is damaged or of another version (%v): if task %s no longer runs, remove the file and its namespace %s",
				p, err, taskID, filepath.Join(filepath.Dir(s.dir), "netns", taskID))
		}
		recs[taskID] = &r
	}
	return recs, nil
}

// validTaskID reports whether id can name files and netns mounts: 1 to 128
// characters of [A-Za-z0-9_.-], not starting with '.'.
func validTaskID(id string) error {
	if id == "" || len(id) > 128 || id[0] == '.' {
		return fmt.Errorf("task ID %q: want 1 to 128 characters of A-Z, a-z, 0-9, '_', '.', '-', not starting with '.'", id)
	}
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.', c == '-':
		default:
			return fmt.Errorf("task ID %q: want 1 to 128 characters of A-Z, a-z, 0-9, '_', '.', '-', not starting with '.'", id)
		}
	}
	return nil
}
