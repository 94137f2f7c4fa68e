// Package codec registers the gRPC codec that can marshal our gogo-generated
// API types.
//
// grpc's default "proto" codec only understands google.golang.org/protobuf
// messages and panics on plain gogo types, so we register our own codec under
// the same name. Messages with generated Marshal/Unmarshal (ours, raft's) use
// them; anything else (gRPC health, reflection) falls back to the default codec.
//
// Import this package (blank) in every binary or package that opens a gRPC
// server or client; api does so itself.
package codec

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// Name is the codec's registered name; it replaces grpc's default.
const Name = grpcproto.Name

type gogoMessage interface {
	Size() int
	MarshalTo([]byte) (int, error)
	Unmarshal([]byte) error
}

type codec struct {
	fallback encoding.CodecV2
}

func init() {
	fallback := encoding.GetCodecV2(grpcproto.Name)
	if fallback == nil {
		panic("codec: grpc's proto codec is not registered")
	}
	encoding.RegisterCodecV2(codec{fallback: fallback})
}

func (c codec) Name() string { return Name }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(gogoMessage)
	if !ok {
		return c.fallback.Marshal(v)
	}
	size := m.Size()
	if mem.IsBelowBufferPoolingThreshold(size) {
		buf := make([]byte, size)
		if _, err := m.MarshalTo(buf); err != nil {
			return nil, fmt.Errorf("marshal %T: %w", v, err)
		}
		return mem.BufferSlice{mem.SliceBuffer(buf)}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	if _, err := m.MarshalTo((*buf)[:size]); err != nil {
		pool.Put(buf)
		return nil, fmt.Errorf("marshal %T: %w", v, err)
	}
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(gogoMessage)
	if !ok {
		return c.fallback.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	// Generated Unmarshal copies bytes fields, so the pooled buffer can be freed.
	if err := m.Unmarshal(buf.ReadOnlyData()); err != nil {
		return fmt.Errorf("unmarshal %T: %w", v, err)
	}
	return nil
}
