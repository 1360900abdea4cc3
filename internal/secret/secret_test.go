package secret_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/backstop-pve/backstop/internal/secret"
)

func TestString_NeverPrinted(t *testing.T) {
	s := secret.String("postgres://u:hunter2@db/x")
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("x", "dsn", s)
	j, _ := json.Marshal(struct{ S secret.String }{s})
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%v %s %q %#v %x", s, s, s, s, s), logged.String(), string(j)} {
		if strings.Contains(out, "hunter2") {
			t.Errorf("secret printed: %s", out)
		}
	}
	if string(s) != "postgres://u:hunter2@db/x" {
		t.Error("conversion lost the value")
	}
	if secret.String("").String() != "" {
		t.Error("empty secret should print empty")
	}
}
