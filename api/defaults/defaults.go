// Package defaults holds the values the system assumes where a spec leaves a
// field unset. Specs are never rewritten with them: readers apply them.
package defaults

import (
	"time"

	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/api"
)

const (
	// TaskHistoryRetentionLimit is how many old tasks are kept per slot.
	TaskHistoryRetentionLimit = 5
	// HeartbeatPeriod is how often agents report to the dispatcher.
	HeartbeatPeriod = 5 * time.Second
	// NodeCertExpiry is the validity of node certificates.
	NodeCertExpiry = 90 * 24 * time.Hour
	// SnapshotInterval is the number of raft entries between snapshots.
	SnapshotInterval = 10000
	// LogEntriesForSlowFollowers is how many entries are kept after a snapshot.
	LogEntriesForSlowFollowers = 500
	// RestartDelay is the pause before a failed task is replaced.
	RestartDelay = 5 * time.Second
	// StopGracePeriod is the time between the stop signal and SIGKILL.
	StopGracePeriod = 10 * time.Second
	// ClusterName is the name of the one cluster object.
	ClusterName = "default"
)

// ClusterSpec is the spec of a new cluster.
func ClusterSpec() api.ClusterSpec {
	return api.ClusterSpec{
		Annotations:   api.Annotations{Name: ClusterName},
		Orchestration: api.OrchestrationConfig{TaskHistoryRetentionLimit: TaskHistoryRetentionLimit},
		Raft: api.RaftConfig{
			SnapshotInterval:           SnapshotInterval,
			LogEntriesForSlowFollowers: LogEntriesForSlowFollowers,
		},
		Dispatcher: api.DispatcherConfig{HeartbeatPeriod: types.DurationProto(HeartbeatPeriod)},
		CAConfig:   api.CAConfig{NodeCertExpiry: types.DurationProto(NodeCertExpiry)},
	}
}
