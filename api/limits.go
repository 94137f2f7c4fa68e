package api

// MaxControlMessageBytes is the largest Control API answer a client should
// accept. List answers carry whole objects and are not paged: 100,000 tasks
// are about 20 MB, well over gRPC's 4 MiB default. Clients of the local
// control socket raise their receive limit to this.
const MaxControlMessageBytes = 1 << 30
