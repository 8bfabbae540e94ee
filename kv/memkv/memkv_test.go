package memkv_test

import (
	"testing"

	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/kv/kvtest"
	"github.com/kelpie-go/kelpie/kv/memkv"
)

func TestConformance(t *testing.T) {
	kvtest.Run(t, func(t *testing.T) kv.DB { return memkv.New() })
}
