package api

// Redacted returns a copy of o without the secrets the control and watch APIs
// never return: secret data, the root CA key, unlock keys, registry
// credentials. Objects without secrets are returned as they are.
func Redacted(o StoreObject) StoreObject {
	switch v := o.(type) {
	case *Secret:
		c := v.Copy()
		c.Spec.Data = nil
		return c
	case *Cluster:
		c := v.Copy()
		c.RootCA.CAKey = nil
		if c.RootCA.RootRotation != nil {
			c.RootCA.RootRotation.CAKey = nil
		}
		c.UnlockKeys = nil
		c.NetworkBootstrapKeys = nil
		return c
	case *Service:
		if hasRegistryAuth(&v.Spec) || (v.PreviousSpec != nil && hasRegistryAuth(v.PreviousSpec)) {
			c := v.Copy()
			clearRegistryAuth(&c.Spec)
			if c.PreviousSpec != nil {
				clearRegistryAuth(c.PreviousSpec)
			}
			return c
		}
	case *Task:
		if v.Spec.Container != nil && v.Spec.Container.RegistryAuth != "" {
			c := v.Copy()
			c.Spec.Container.RegistryAuth = ""
			return c
		}
	}
	return o
}

func hasRegistryAuth(s *ServiceSpec) bool {
	return s.Task.Container != nil && s.Task.Container.RegistryAuth != ""
}

func clearRegistryAuth(s *ServiceSpec) {
	if s.Task.Container != nil {
		s.Task.Container.RegistryAuth = ""
	}
}
