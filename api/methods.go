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
