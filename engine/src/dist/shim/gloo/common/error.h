// Stand-in for Gloo's header (see README.md): nothing oxrl's use of c10d needs.
#pragma once
