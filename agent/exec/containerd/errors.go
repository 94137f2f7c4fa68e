package containerd

import (
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// isConnError reports whether err is a gRPC Unavailable the client did not
// translate: containerd could not be reached.
func isConnError(err error) bool {
	var se interface{ GRPCStatus() *status.Status }
	return errors.As(err, &se) && se.GRPCStatus().Code() == codes.Unavailable
}
