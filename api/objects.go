package api

import (
	"fmt"
	"strings"

	_ "github.com/flotilla/flotilla/api/codec" // every gRPC user of api gets the gogo codec
)

// Kind names of the stored objects, as used by watches and the store.
const (
	KindNode    = "node"
	KindService = "service"
	KindTask    = "task"
	KindCluster = "cluster"
	KindNetwork = "network"
	KindSecret  = "secret"
	KindConfig  = "config"
)

// Kinds lists every stored object kind.
var Kinds = []string{KindNode, KindService, KindTask, KindCluster, KindNetwork, KindSecret, KindConfig}

// StoreObject is implemented by every object the store holds.
type StoreObject interface {
	// Kind is one of the Kind* constants; it never reads the receiver, so it
	// may be called on a nil pointer.
	Kind() string
	GetID() string
	GetMeta() Meta
	SetMeta(Meta)
	// GetName is the name the object is found by: its annotations' name, or for
	// a node without one, its hostname.
	GetName() string
	GetLabels() map[string]string
	CopyStoreObject() StoreObject
	Size() int
}

func (*Node) Kind() string    { return KindNode }
func (*Service) Kind() string { return KindService }
func (*Task) Kind() string    { return KindTask }
func (*Cluster) Kind() string { return KindCluster }
func (*Network) Kind() string { return KindNetwork }
func (*Secret) Kind() string  { return KindSecret }
func (*Config) Kind() string  { return KindConfig }

func (m *Node) SetMeta(meta Meta)    { m.Meta = meta }
func (m *Service) SetMeta(meta Meta) { m.Meta = meta }
func (m *Task) SetMeta(meta Meta)    { m.Meta = meta }
func (m *Cluster) SetMeta(meta Meta) { m.Meta = meta }
func (m *Network) SetMeta(meta Meta) { m.Meta = meta }
func (m *Secret) SetMeta(meta Meta)  { m.Meta = meta }
func (m *Config) SetMeta(meta Meta)  { m.Meta = meta }

func (m *Node) GetName() string {
	if m.Spec.Annotations.Name != "" {
		return m.Spec.Annotations.Name
	}
	if m.Description != nil {
		return m.Description.Hostname
	}
	return ""
}
func (m *Service) GetName() string { return m.Spec.Annotations.Name }

// GetName of a task is its annotations' name if set, else "<service>.<slot>"
// (replicated) or "<service>.<node id>" (global), as Docker shows them.
func (m *Task) GetName() string {
	if m.Annotations.Name != "" {
		return m.Annotations.Name
	}
	if m.ServiceAnnotations.Name == "" {
		return ""
	}
	if m.Slot != 0 {
		return fmt.Sprintf("%s.%d", m.ServiceAnnotations.Name, m.Slot)
	}
	return m.ServiceAnnotations.Name + "." + m.NodeID
}
func (m *Cluster) GetName() string { return m.Spec.Annotations.Name }
func (m *Network) GetName() string { return m.Spec.Annotations.Name }
func (m *Secret) GetName() string  { return m.Spec.Annotations.Name }
func (m *Config) GetName() string  { return m.Spec.Annotations.Name }

func (m *Node) GetLabels() map[string]string    { return m.Spec.Annotations.Labels }
func (m *Service) GetLabels() map[string]string { return m.Spec.Annotations.Labels }
func (m *Task) GetLabels() map[string]string    { return m.Annotations.Labels }
func (m *Cluster) GetLabels() map[string]string { return m.Spec.Annotations.Labels }
func (m *Network) GetLabels() map[string]string { return m.Spec.Annotations.Labels }
func (m *Secret) GetLabels() map[string]string  { return m.Spec.Annotations.Labels }
func (m *Config) GetLabels() map[string]string  { return m.Spec.Annotations.Labels }

func (m *Node) CopyStoreObject() StoreObject    { return m.Copy() }
func (m *Service) CopyStoreObject() StoreObject { return m.Copy() }
func (m *Task) CopyStoreObject() StoreObject    { return m.Copy() }
func (m *Cluster) CopyStoreObject() StoreObject { return m.Copy() }
func (m *Network) CopyStoreObject() StoreObject { return m.Copy() }
func (m *Secret) CopyStoreObject() StoreObject  { return m.Copy() }
func (m *Config) CopyStoreObject() StoreObject  { return m.Copy() }

// NewObject wraps a store object in the Object oneof.
func NewObject(o StoreObject) Object {
	switch v := o.(type) {
	case *Node:
		return Object{Object: &Object_Node{Node: v}}
	case *Service:
		return Object{Object: &Object_Service{Service: v}}
	case *Task:
		return Object{Object: &Object_Task{Task: v}}
	case *Cluster:
		return Object{Object: &Object_Cluster{Cluster: v}}
	case *Network:
		return Object{Object: &Object_Network{Network: v}}
	case *Secret:
		return Object{Object: &Object_Secret{Secret: v}}
	case *Config:
		return Object{Object: &Object_Config{Config: v}}
	}
	panic(fmt.Sprintf("api: %T is not a store object", o))
}

// StoreObject unwraps the Object oneof; nil when it is empty.
func (m *Object) StoreObject() StoreObject {
	switch v := m.GetObject().(type) {
	case *Object_Node:
		return v.Node
	case *Object_Service:
		return v.Service
	case *Object_Task:
		return v.Task
	case *Object_Cluster:
		return v.Cluster
	case *Object_Network:
		return v.Network
	case *Object_Secret:
		return v.Secret
	case *Object_Config:
		return v.Config
	}
	return nil
}

// ParseKind validates an object kind name given by a user or a watch request.
func ParseKind(s string) (string, error) {
	k := strings.ToLower(strings.TrimSpace(s))
	for _, known := range Kinds {
		if k == known {
			return k, nil
		}
	}
	return "", fmt.Errorf("unknown object kind %q: use one of %s", s, strings.Join(Kinds, ", "))
}
