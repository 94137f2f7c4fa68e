package orchestrator

import "github.com/flotilla/flotilla/api"

// An Updater chooses which out-of-date tasks of a service to replace now.
// The orchestrators call it on every reconcile of a service that has
// out-of-date current tasks (outdated is in slot or node order) and replace
// each task it returns stop-first: the old task gets DesiredState SHUTDOWN
// and its replacement is created in the same write. Tasks it leaves out are
// offered again at the service's next reconcile.
//
// This is the seam for rolling updates (parallelism, delay, monitor, failure
// action), which will need a clock and to be woken up; AllAtOnce is the only
// policy for now.
type Updater func(svc *api.Service, outdated []*api.Task) []*api.Task

// AllAtOnce replaces every out-of-date task at once.
func AllAtOnce(_ *api.Service, outdated []*api.Task) []*api.Task { return outdated }
