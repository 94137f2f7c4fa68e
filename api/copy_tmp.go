package api

// Temporary until protobuf/ generates Copy methods.

import "github.com/gogo/protobuf/proto"

func (m *Node) Copy() *Node               { return proto.Clone(m).(*Node) }
func (m *Service) Copy() *Service         { return proto.Clone(m).(*Service) }
func (m *Task) Copy() *Task               { return proto.Clone(m).(*Task) }
func (m *Cluster) Copy() *Cluster         { return proto.Clone(m).(*Cluster) }
func (m *Network) Copy() *Network         { return proto.Clone(m).(*Network) }
func (m *Secret) Copy() *Secret           { return proto.Clone(m).(*Secret) }
func (m *Config) Copy() *Config           { return proto.Clone(m).(*Config) }
func (m *ServiceSpec) Copy() *ServiceSpec { return proto.Clone(m).(*ServiceSpec) }
func (m *ClusterSpec) Copy() *ClusterSpec { return proto.Clone(m).(*ClusterSpec) }
func (m *NodeSpec) Copy() *NodeSpec       { return proto.Clone(m).(*NodeSpec) }
