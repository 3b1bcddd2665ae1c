# ssm-run on the shipped KJV model: its greedy sample against the one transformers wrote in eval.json
# (tools/train_byte_mamba.py), ppl's JSON output, then a bad call. (The held-out loss itself is checked
# against eval.json in models_test.)
# Variables: SSM_RUN (the program), MODEL (folder), TEXT (held-out text).
file(READ "${MODEL}/eval.json" eval)

execute_process(COMMAND "${SSM_RUN}" generate "${MODEL}" --prompt "And God said" --tokens 200 --quiet
                OUTPUT_VARIABLE sample RESULT_VARIABLE rc)
string(JSON expected GET "${eval}" sample continuation_text)
if(NOT rc EQUAL 0 OR NOT sample STREQUAL "${expected}\n")
  message(FATAL_ERROR "greedy sample differs from transformers':\n${sample}\nexpected\n${expected}")
endif()

execute_process(COMMAND "${SSM_RUN}" ppl "${MODEL}" "${TEXT}" --window 128 --max-windows 2 --bin-width 32 --json
                OUTPUT_VARIABLE ppl RESULT_VARIABLE rc)
string(JSON bins LENGTH "${ppl}" bins)
string(JSON predicted GET "${ppl}" predicted_tokens)
if(NOT rc EQUAL 0 OR NOT bins EQUAL 4 OR NOT predicted EQUAL 254)
  message(FATAL_ERROR "ssm-run ppl --json: exit ${rc}, ${bins} bins, ${predicted} predicted tokens:\n${ppl}")
endif()

execute_process(COMMAND "${SSM_RUN}" ppl "${MODEL}" "${TEXT}" --window 1 ERROR_VARIABLE error RESULT_VARIABLE rc)
if(rc EQUAL 0 OR NOT error MATCHES "--window must be an integer >= 2, got '1'")
  message(FATAL_ERROR "bad --window: exit ${rc}, '${error}'")
endif()
