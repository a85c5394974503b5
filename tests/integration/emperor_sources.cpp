// tests/CMakeLists.txt links liege_integration_tests against liege_core only, so the emperor
// modules that emperor_modules_test.cpp exercises are compiled into the test binary here. Once
// that target links liege_emperor too, delete this file.
#include "../../emperor/health.cpp"
#include "../../emperor/spawner.cpp"
#include "../../emperor/watcher.cpp"
