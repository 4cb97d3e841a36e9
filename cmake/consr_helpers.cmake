# Build settings for consr's *own* targets (tests, examples, benchmarks). Nothing here is
# propagated to users of consr::consr.
include(GNUInstallDirs)

if(NOT CMAKE_BUILD_TYPE AND NOT CMAKE_CONFIGURATION_TYPES)
  set(CMAKE_BUILD_TYPE Release CACHE STRING "Build type" FORCE)
endif()

add_library(consr_project_options INTERFACE)
target_compile_options(consr_project_options INTERFACE
  $<$<COMPILE_LANG_AND_ID:CXX,GNU,Clang>:-Wall -Wextra -Wpedantic -Wno-unknown-pragmas>)
if(CONSR_NATIVE_ARCH)
  target_compile_options(consr_project_options INTERFACE $<$<COMPILE_LANG_AND_ID:CXX,GNU,Clang>:-march=native>)
endif()
if(CONSR_SANITIZE)
  target_compile_options(consr_project_options INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer>)
  target_link_options(consr_project_options INTERFACE -fsanitize=address,undefined)
endif()

# consr_add_test(<name> SOURCES <files...> [LIBS <targets...>] [LABELS <labels...>])
# Builds one Catch2 executable and registers its test cases with CTest.
function(consr_add_catch_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE consr::consr consr_catch_main consr_project_options ${ARG_LIBS})
  add_test(NAME ${name} COMMAND ${name} --use-colour no)
  if(ARG_LABELS)
    set_tests_properties(${name} PROPERTIES LABELS "${ARG_LABELS}")
  endif()
endfunction()
