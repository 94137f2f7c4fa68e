//go:build linux

package hostnet

import (
	"errors"
	"fmt"
	"net/netip"
)

var (
	// ErrClosed is returned by a Manager after Close or Teardown.
	ErrClosed = errors.New("hostnet: manager closed")
	// ErrPortInUse matches (errors.Is) every *PortConflictError.
	ErrPortInUse = errors.New("host port in use")
	// ErrSubnetFull is returned by Attach when no address is left.
	ErrSubnetFull = errors.New("no free address in the task subnet")
	// ErrSubnetConflict matches (errors.Is) every *SubnetConflictError.
	ErrSubnetConflict = errors.New("task subnet overlaps the host's networks")
)

// PortConflictError says that a host port cannot be published: another task
// on this node publishes it (TaskID set), or a process of the host has it
// bound (TaskID empty).
type PortConflictError struct {
	Port     uint16
	Protocol string // "tcp", "udp" or "sctp"
	TaskID   string
	Err      error // what bind(2) said, for a host process
}

func (e *PortConflictError) Error() string {
	if e.TaskID != "" {
		return fmt.Sprintf("host port %d/%s is already published by task %s on this node: publish another port, or use published=0 to get a free one", e.Port, e.Protocol, e.TaskID)
	}
	return fmt.Sprintf("host port %d/%s is in use by a process on this node (%v): stop it, or publish another port", e.Port, e.Protocol, e.Err)
}

// Is makes errors.Is(err, ErrPortInUse) true.
func (e *PortConflictError) Is(target error) bool { return target == ErrPortInUse }

func (e *PortConflictError) Unwrap() error { return e.Err }

// SubnetConflictError says that the task subnet overlaps a route or an
// address the host already has, so tasks could not reach it (or it them).
type SubnetConflictError struct {
	Subnet netip.Prefix
	// Conflict is the overlapping destination or address and Device the
	// link it is on ("" if none).
	Conflict netip.Prefix
	Device   string
	What     string // "route" or "address"
}

func (e *SubnetConflictError) Error() string {
	on := ""
	if e.Device != "" {
		on = " on " + e.Device
	}
	return fmt.Sprintf("task subnet %s overlaps the host's %s %s%s: choose another private subnet for the node bridge (swarmd --bridge-subnet)", e.Subnet, e.What, e.Conflict, on)
}

// Is makes errors.Is(err, ErrSubnetConflict) true.
func (e *SubnetConflictError) Is(target error) bool { return target == ErrSubnetConflict }
