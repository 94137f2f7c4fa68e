package controlapi

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/ca"
)

// UnlockKeySubsystem names the managers' unlock key among Cluster.UnlockKeys.
const UnlockKeySubsystem = "manager"

// ManagerUnlockKey returns the cluster's current unlock key, nil when
// autolock is off.
func ManagerUnlockKey(c *api.Cluster) ca.UnlockKey {
	if c == nil || !c.Spec.EncryptionConfig.AutoLockManagers {
		return nil
	}
	for _, k := range c.UnlockKeys {
		if k.Subsystem == UnlockKeySubsystem && len(k.Key) == ca.UnlockKeySize {
			return ca.UnlockKey(k.Key)
		}
	}
	return nil
}

// updateUnlockKey makes c's unlock key follow its autolock setting: a new
// key when autolock is turned on or a rotation is asked for, none when it is
// off. Managers re-seal their keys when they apply the change.
func updateUnlockKey(c *api.Cluster, r api.KeyRotation) error {
	if !c.Spec.EncryptionConfig.AutoLockManagers {
		if r.ManagerUnlockKey {
			return status.Error(codes.FailedPrecondition,
				"autolock is off, so there is no unlock key to rotate: turn it on with --autolock=true")
		}
		c.UnlockKeys = nil
		return nil
	}
	if ManagerUnlockKey(c) != nil && !r.ManagerUnlockKey {
		return nil
	}
	c.EncryptionKeyLamportClock++
	c.UnlockKeys = []*api.EncryptionKey{{
		Subsystem:   UnlockKeySubsystem,
		Key:         ca.GenerateUnlockKey(),
		LamportTime: c.EncryptionKeyLamportClock,
	}}
	return nil
}

// GetUnlockKey returns the unlock key, or an empty one when autolock is off.
func (s *Server) GetUnlockKey(ctx context.Context, req *api.GetUnlockKeyRequest) (*api.GetUnlockKeyResponse, error) {
	cs, err := list(s, func(*api.Cluster) bool { return true })
	if err != nil {
		return nil, err
	}
	if len(cs) == 0 {
		return nil, status.Error(codes.FailedPrecondition, "no cluster yet: this manager has not created or joined one; retry in a moment")
	}
	resp := &api.GetUnlockKeyResponse{ClusterVersion: cs[0].Meta.Version}
	if k := ManagerUnlockKey(cs[0]); k != nil {
		resp.UnlockKey = k.String()
	}
	return resp, nil
}
