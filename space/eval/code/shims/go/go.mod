// The module every Go test program is built in. The tests import testify's assert; a module proxy
// is not reachable offline, so the local stand-in in ./testify replaces it.
module humaneval

go 1.18

require github.com/stretchr/testify v1.8.4

replace github.com/stretchr/testify => ./testify
