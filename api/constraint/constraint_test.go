package constraint

import "testing"

func TestParse(t *testing.T) {
	for _, c := range []struct {
		expr string
		ok   bool
		want Constraint
	}{
		{"node.labels.zone==a", true, Constraint{"node.labels.zone", Equal, "a"}},
		{" node.role != manager ", true, Constraint{"node.role", NotEqual, "manager"}},
		{"node.hostname==", false, Constraint{}},
		{"node.labels.==x", false, Constraint{}},
		{"node.color==red", false, Constraint{}},
		{"node.role=manager", false, Constraint{}},
		{"node.role==a==b", false, Constraint{}},
	} {
		got, err := Parse(c.expr)
		if (err == nil) != c.ok {
			t.Errorf("Parse(%q) error = %v, want ok=%v", c.expr, err, c.ok)
			continue
		}
		if c.ok && got != c.want {
			t.Errorf("Parse(%q) = %+v, want %+v", c.expr, got, c.want)
		}
	}
}

func TestMatch(t *testing.T) {
	eq, _ := Parse("node.role==Manager")
	ne, _ := Parse("node.role!=manager")
	if !eq.Match("manager") || eq.Match("worker") || ne.Match("MANAGER") || !ne.Match("") {
		t.Error("match semantics wrong")
	}
}
