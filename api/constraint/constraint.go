// Package constraint parses placement constraints such as
// "node.labels.zone==a" and matches them against nodes.
package constraint

import (
	"fmt"
	"strings"
)

// Operator compares a node attribute with a value.
type Operator int

const (
	Equal Operator = iota
	NotEqual
)

// Constraint is one parsed placement expression.
type Constraint struct {
	Key      string // e.g. "node.hostname", "node.labels.zone"
	Operator Operator
	Value    string
}

// Keys a constraint may test; "node.labels." takes a label name after it.
var Keys = []string{"node.id", "node.hostname", "node.role", "node.ip", "node.platform.os", "node.platform.arch", "node.labels.<name>"}

// Parse parses one expression.
func Parse(expr string) (Constraint, error) {
	var c Constraint
	i := strings.Index(expr, "==")
	c.Operator = Equal
	if j := strings.Index(expr, "!="); j >= 0 && (i < 0 || j < i) {
		i, c.Operator = j, NotEqual
	}
	if i < 0 {
		return c, fmt.Errorf("constraint %q has no operator: write KEY==VALUE or KEY!=VALUE", expr)
	}
	c.Key = strings.ToLower(strings.TrimSpace(expr[:i]))
	c.Value = strings.TrimSpace(expr[i+2:])
	if c.Value == "" || strings.ContainsAny(c.Value, "=!") {
		return c, fmt.Errorf("constraint %q has an invalid value: write KEY==VALUE or KEY!=VALUE", expr)
	}
	if !validKey(c.Key) {
		return c, fmt.Errorf("constraint %q has unknown key %q: use one of %s", expr, c.Key, strings.Join(Keys, ", "))
	}
	return c, nil
}

// ParseAll parses every expression; the error names the first bad one.
func ParseAll(exprs []string) ([]Constraint, error) {
	out := make([]Constraint, 0, len(exprs))
	for _, e := range exprs {
		c, err := Parse(e)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func validKey(k string) bool {
	if strings.HasPrefix(k, "node.labels.") {
		return len(k) > len("node.labels.")
	}
	switch k {
	case "node.id", "node.hostname", "node.role", "node.ip", "node.platform.os", "node.platform.arch":
		return true
	}
	return false
}

// Match reports whether a node attribute value satisfies c. Values compare
// case-insensitively, as Docker's do; an absent attribute is "".
func (c Constraint) Match(value string) bool {
	eq := strings.EqualFold(value, c.Value)
	if c.Operator == Equal {
		return eq
	}
	return !eq
}
