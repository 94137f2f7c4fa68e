package api

// ControlServiceMethods lists the method names of the Control service, for
// per-method authorization tables.
func ControlServiceMethods() []string {
	out := make([]string, 0, len(_Control_serviceDesc.Methods))
	for _, m := range _Control_serviceDesc.Methods {
		out = append(out, m.MethodName)
	}
	return out
}

// LogsServiceMethods lists the method names of the Logs service (the
// client's side of task logs, served beside Control), for per-method
// authorization tables.
func LogsServiceMethods() []string {
	out := make([]string, 0, len(_Logs_serviceDesc.Methods)+len(_Logs_serviceDesc.Streams))
	for _, m := range _Logs_serviceDesc.Methods {
		out = append(out, m.MethodName)
	}
	for _, s := range _Logs_serviceDesc.Streams {
		out = append(out, s.StreamName)
	}
	return out
}

// ControlServiceName is the Control service's full gRPC name
// ("flotilla.api.Control"), as in a method's "/SERVICE/METHOD".
func ControlServiceName() string { return _Control_serviceDesc.ServiceName }

// LeaderTrailer is the gRPC trailer in which a manager that cannot serve an
// agent's session (it is not the leader) names the leader's address.
const LeaderTrailer = "flotilla-leader"
