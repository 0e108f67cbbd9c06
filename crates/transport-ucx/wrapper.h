/* Input for regen-bindings.sh: the UCP API, as installed by libucx-dev. */
#include <ucp/api/ucp.h>
