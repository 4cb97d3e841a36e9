# ctest cmake_torch_one_installation (cmake -P): consr_torch.cmake must take every Torch library from
# the installation Torch_DIR names, even when another LibTorch sits on the system search paths, and
# must stop with a clear message when the installation at Torch_DIR is incomplete and a library would
# come from elsewhere. Fake installations (empty library files, configs that search as Torch's own
# do: `find_package(Caffe2 PATHS <dir>/../Caffe2)` and `find_library(c10 PATHS <prefix>/lib)`, both
# after the system paths) stand for a pip wheel and Debian's libtorch-dev; no compiler is needed.
#   -DCONSR_SOURCE_DIR=<repo> -DWORK_DIR=<scratch dir> [-DGENERATOR=<cmake generator>]
foreach(var IN ITEMS CONSR_SOURCE_DIR WORK_DIR)
  if(NOT ${var})
    message(FATAL_ERROR "torch_one_installation.cmake: pass -D${var}=...")
  endif()
endforeach()
file(REMOVE_RECURSE "${WORK_DIR}")

# Caffe2 config: imported targets torch and c10 at <prefix>/lib, <prefix> = three levels up.
set(caffe2_config [=[
get_filename_component(_fake_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
foreach(_fake_lib IN ITEMS torch c10)
  if(NOT TARGET ${_fake_lib})
    add_library(${_fake_lib} SHARED IMPORTED)
    set_target_properties(${_fake_lib} PROPERTIES IMPORTED_LOCATION "${_fake_prefix}/lib/lib${_fake_lib}.so")
  endif()
endforeach()
set(Caffe2_MAIN_LIBS "")
]=])
# Torch config, searching as upstream's does (system paths before the PATHS it names).
set(torch_config [=[
get_filename_component(TORCH_INSTALL_PREFIX "${CMAKE_CURRENT_LIST_DIR}/../../../" ABSOLUTE)
set(TORCH_INCLUDE_DIRS "${TORCH_INSTALL_PREFIX}/include")
include(CMakeFindDependencyMacro)
find_dependency(Caffe2 PATHS ${CMAKE_CURRENT_LIST_DIR}/../Caffe2)
set(TORCH_LIBRARIES torch ${Caffe2_MAIN_LIBS})
find_library(c10_LIBRARY c10 PATHS "${TORCH_INSTALL_PREFIX}/lib")
if(c10_LIBRARY)
  list(APPEND TORCH_LIBRARIES ${c10_LIBRARY})
endif()
find_library(TORCH_LIBRARY torch PATHS "${TORCH_INSTALL_PREFIX}/lib")
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Torch DEFAULT_MSG TORCH_LIBRARY TORCH_INCLUDE_DIRS)
]=])
set(torch_version_2 [=[
set(PACKAGE_VERSION "2.99.0")
set(PACKAGE_VERSION_COMPATIBLE TRUE)
]=])
set(torch_version_1 [=[
set(PACKAGE_VERSION "1.13.0")
set(PACKAGE_VERSION_COMPATIBLE TRUE)
]=])

# <root>/share/cmake/{Torch,Caffe2} (pip layout; Torch config only when `version` is given) and
# <root>/lib/lib{torch,c10}.so (the names in `libs`).
function(make_installation root version libs)
  file(WRITE "${root}/share/cmake/Caffe2/Caffe2Config.cmake" "${caffe2_config}")
  if(version)
    file(WRITE "${root}/share/cmake/Torch/TorchConfig.cmake" "${torch_config}")
    file(WRITE "${root}/share/cmake/Torch/TorchConfigVersion.cmake" "${torch_version_${version}}")
  endif()
  file(MAKE_DIRECTORY "${root}/include" "${root}/lib")
  foreach(lib IN LISTS libs)
    file(TOUCH "${root}/lib/lib${lib}.so")
  endforeach()
endfunction()

set(system "${WORK_DIR}/system")
make_installation("${system}" 1 "torch;c10")   # "Debian's" LibTorch, found through the system prefix
make_installation("${WORK_DIR}/wheel" 2 "torch;c10")
make_installation("${WORK_DIR}/partial" 2 "torch")  # no libc10.so: c10 can only come from the system

file(WRITE "${WORK_DIR}/project/CMakeLists.txt" "
cmake_minimum_required(VERSION 3.20)
project(torch_one_installation NONE)
list(PREPEND CMAKE_SYSTEM_PREFIX_PATH \"${system}\")
# Only the fake installations: no prefixes from PATH, CMAKE_PREFIX_PATH in the environment or the
# package registry (a real LibTorch on this machine stays out of the cases).
set(CMAKE_FIND_USE_SYSTEM_ENVIRONMENT_PATH FALSE)
set(CMAKE_FIND_USE_CMAKE_ENVIRONMENT_PATH FALSE)
set(CMAKE_FIND_USE_PACKAGE_REGISTRY FALSE)
set(CMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY FALSE)
list(APPEND CMAKE_MODULE_PATH \"${CONSR_SOURCE_DIR}/cmake\")
set(CONSR_ENABLE_TORCH ON)
add_library(consr INTERFACE)
include(consr_torch)
get_target_property(location torch IMPORTED_LOCATION)
message(STATUS \"probe: torch=\${location} c10=\${c10_LIBRARY} Caffe2_DIR=\${Caffe2_DIR}\")
")

set(failures 0)
# configure(<name> <expect: pass|fail> <regex the output must match> [extra cmake args...])
function(configure name expect regex)
  set(args -S "${WORK_DIR}/project" -B "${WORK_DIR}/build-${name}" ${ARGN})
  if(GENERATOR)
    list(APPEND args -G "${GENERATOR}")
  endif()
  execute_process(COMMAND "${CMAKE_COMMAND}" ${args} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  set(all "${out}${err}")
  set(ok TRUE)
  if(expect STREQUAL "pass" AND NOT rc EQUAL 0)
    set(ok FALSE)
  elseif(expect STREQUAL "fail" AND rc EQUAL 0)
    set(ok FALSE)
  endif()
  if(NOT all MATCHES "${regex}")
    set(ok FALSE)
  endif()
  if(ok)
    message(STATUS "ok: ${name} (${expect}, output matches '${regex}')")
  else()
    message(STATUS "FAILED: ${name}: expected ${expect} (exit ${rc}) and output matching '${regex}':\n${all}")
    math(EXPR failures "${failures} + 1")
    set(failures ${failures} PARENT_SCOPE)
  endif()
endfunction()

set(wheel "${WORK_DIR}/wheel")
set(one_wheel "probe: torch=${wheel}/lib/libtorch.so c10=${wheel}/lib/libc10.so Caffe2_DIR=${wheel}/share/cmake/Caffe2")
# The wheel's Torch_DIR beside a system LibTorch: everything from the wheel, and said so.
configure(wheel pass "consr: LibTorch 2.99.0 from ${wheel}.*${one_wheel}" "-DTorch_DIR=${wheel}/share/cmake/Torch")
# The same through CMAKE_PREFIX_PATH (what torch.utils.cmake_prefix_path gives).
configure(prefix_path pass "${one_wheel}" "-DCMAKE_PREFIX_PATH=${wheel}/share/cmake")
# A build directory that an earlier configure left pointing at the system's Caffe2 and c10.
configure(stale_cache pass "${one_wheel}" "-DTorch_DIR=${wheel}/share/cmake/Torch"
          "-DCaffe2_DIR=${system}/share/cmake/Caffe2" "-Dc10_LIBRARY=${system}/lib/libc10.so")
# No Torch_DIR: the system's LibTorch, consistent.
configure(system pass "probe: torch=${system}/lib/libtorch.so c10=${system}/lib/libc10.so")
# An installation without libc10.so: c10 would come from the system. A clear error naming it.
configure(mix fail "LibTorch is a mix of installations.*${system}/lib/libc10.so"
          "-DTorch_DIR=${WORK_DIR}/partial/share/cmake/Torch")

if(failures)
  message(FATAL_ERROR "${failures} case(s) of torch_one_installation failed")
endif()
message(STATUS "5 passed, 0 failed")
