"""The configuration keys KataGo reads, as data: a pool file's ``overrides`` (or a
``-override-config``) naming anything else is a typo or an injected key, refused before an
engine starts.

Where it came from: KataGo's source at tag v1.17.2 (github.com/lightvector/KataGo). How it
was made: a regular expression collected the string literal passed as the key to every
``cfg.contains(...)``/``cfg.get*(...)`` call, outside comments, in cpp/program/setup.cpp,
cpp/command/analysis.cpp, cpp/command/gtp.cpp, cpp/core/logger.cpp and
cpp/neuralnet/*backend.cpp (``KEYS``), plus the literals read with a bot index appended
(``"maxVisits" + idxStr``: ``INDEXED_KEYS``); the alias analysis.cpp applies
(numSearchThreadsPerAnalysisThread) was added by hand. Keys KataGo builds at run time (backend
prefix, device thread and model numbers, avoidSgf pattern sets, auto-avoid board sizes) were
read off the same files and written as ``_PATTERNS``. Cross-checked against every key named
in cpp/configs/analysis_example.cfg and gtp_example.cfg: all match but avoidMYTDaggerHack,
which no code reads any more; and against the strings in the v1.18.1 OpenCL binary katapool's
tests run: every key is there but the CUDA/TensorRT-only ones and "rules" (the tail of a
longer string there). Rebuild it the same way for a newer KataGo.
"""

from __future__ import annotations

import difflib
import re

KEYS = frozenset({
    "allowResignation", "alwaysComputePassAliveUnderSuicideRules",
    "analysisIgnorePreRootHistory", "analysisPVLen", "analysisWideRootNoise", "antiMirror",
    "assumeMultipleStartingBlackMovesAreHandicap", "autoAvoidRepeatDir",
    "autoAvoidRepeatSaveChunkSize", "avoidRepeatedPatternUtility", "chosenMovePrune",
    "chosenMoveSubtract", "chosenMoveTemperature", "chosenMoveTemperatureEarly",
    "chosenMoveTemperatureHalflife", "chosenMoveTemperatureOnlyBelowProb", "cleanupBeforePass",
    "conservativePass", "cpuctExploration", "cpuctExplorationBase", "cpuctExplorationLog",
    "cpuctUtilityStdevPrior", "cpuctUtilityStdevPriorWeight", "cpuctUtilityStdevScale",
    "cudaDisableGraphSDPA", "cudaDisableWarmup", "cudaUse1x1Matmul", "cudaUseNHWC",
    "debugSkipNeuralNet", "defaultBoardSize", "defaultBoardXSize", "defaultBoardYSize",
    "delayMoveMax", "delayMoveScale", "deviceToUse", "drawEquivalentWinsForWhite",
    "dynamicPlayoutDoublingAdvantageCapPerOppLead", "dynamicScoreCenterScale",
    "dynamicScoreCenterZeroWeight", "dynamicScoreUtilityFactor", "enableMorePassingHacks",
    "enablePassingHacks", "endgameTurnTimeDecay", "evalCacheMinVisits", "fillDameBeforePass",
    "forDeterministicTesting", "fpuLossProp", "fpuParentWeight",
    "fpuParentWeightByVisitedPolicy", "fpuParentWeightByVisitedPolicyPow", "fpuReductionMax",
    "friendlyPass", "friendlyPassOk", "futileVisitsThreshold", "genmoveAntiMirror", "gpuToUse",
    "graphSearchCatchUpLeakProb", "graphSearchRepBound", "gtpForceMaxNNSize", "hasButton",
    "homeDataDir", "humanSLChosenMoveIgnorePass", "humanSLChosenMovePiklLambda",
    "humanSLChosenMoveProp", "humanSLCpuctExploration", "humanSLCpuctPermanent",
    "humanSLOppExploreProbWeightful", "humanSLOppExploreProbWeightless",
    "humanSLPlaExploreProbWeightful", "humanSLPlaExploreProbWeightless", "humanSLProfile",
    "humanSLRootExploreProbWeightful", "humanSLRootExploreProbWeightless", "ignoreAllHistory",
    "ignoreGTPAndForceKomi", "ignorePreRootHistory", "inputsUseNHWC", "koRule", "komi",
    "lagBuffer", "lcbStdevs", "logAllGTPCommunication", "logAllRequests", "logAllResponses",
    "logConfigContents", "logDir", "logDirDated", "logErrorsAndWarnings", "logFile",
    "logSearchInfo", "logSearchInfoForChosenMove", "logTimeStamp", "logToStderr", "logToStdout",
    "maxBoardSizeForNNBuffer", "maxBoardXSizeForNNBuffer", "maxBoardYSizeForNNBuffer",
    "maxPlayouts", "maxPlayoutsPondering", "maxTime", "maxTimePondering", "maxVisits",
    "maxVisitsPondering", "midgameTimeFactor", "midgameTurnPeakTime", "minPlayoutsPerThread",
    "minVisitPropForLCB", "multiStoneSuicideLegal", "nnCacheSizePowerOfTwo", "nnForcedSymmetry",
    "nnMaxBatchSize", "nnMutexPoolSizePowerOfTwo", "nnPolicyTemperature", "nnRandSeed",
    "nnRandomize", "noResultUtilityForWhite", "nodeTableShardsPowerOfTwo",
    "noisePruneUtilityScale", "noisePruningCap", "numAnalysisThreads", "numBots",
    "numEigenThreadsPerModel", "numNNServerThreadsPerModel", "numSearchThreads",
    "numSearchThreadsPerAnalysisThread", "numVirtualLossesPerThread",
    "obviousMovesPolicyEntropyTolerance", "obviousMovesPolicySurpriseTolerance",
    "obviousMovesTimeFactor", "ogsChatToStderr", "openclReTunePerBoardSize", "openclTunerFile",
    "overallocateTimeFactor", "playoutDoublingAdvantage", "playoutDoublingAdvantagePla",
    "policyOptimism", "ponderingEnabled", "preventCleanupPhase", "reportAnalysisWinratesAs",
    "requireMaxBoardSize", "resignConsecTurns", "resignMinMovesPerBoardArea",
    "resignMinScoreDifference", "resignThreshold", "rootDesiredPerChildVisitsCoeff",
    "rootDirichletNoiseTotalConcentration", "rootDirichletNoiseWeight", "rootEndingBonusPoints",
    "rootFpuLossProp", "rootFpuReductionMax", "rootNoiseEnabled", "rootNumSymmetriesToSample",
    "rootPolicyOptimism", "rootPolicyTemperature", "rootPolicyTemperatureEarly",
    "rootPruneUselessMoves", "rootSymmetryPruning", "rules", "scoringRule",
    "searchFactorAfterOnePass", "searchFactorAfterTwoPass", "searchFactorWhenWinning",
    "searchFactorWhenWinningThreshold", "searchRandSeed", "startupPrintMessageToStderr",
    "staticScoreUtilityFactor", "subtreeValueBiasFactor", "subtreeValueBiasFreeProp",
    "subtreeValueBiasWeightExponent", "taxRule", "treeReuseCarryOverTimeFactor",
    "trtDisableOnnx", "trtDumpDebugPlanToDir", "trtTransformerNHWC", "uncertaintyCoeff",
    "uncertaintyExponent", "uncertaintyMaxWeight", "useEvalCache", "useFP16", "useGraphSearch",
    "useLcbForSelection", "useNoisePruning", "useNonBuggyLcb", "useUncertainty",
    "valueWeightExponent", "warnUnusedFields", "whiteBonusPerHandicapStone",
    "whiteHandicapBonus", "wideRootNoise", "winLossUtilityFactor"
})

INDEXED_KEYS = frozenset({
    "alwaysComputePassAliveUnderSuicideRules", "antiMirror", "avoidRepeatedPatternUtility",
    "chosenMovePrune", "chosenMoveSubtract", "chosenMoveTemperature",
    "chosenMoveTemperatureEarly", "chosenMoveTemperatureHalflife",
    "chosenMoveTemperatureOnlyBelowProb", "conservativePass", "cpuctExploration",
    "cpuctExplorationBase", "cpuctExplorationLog", "cpuctUtilityStdevPrior",
    "cpuctUtilityStdevPriorWeight", "cpuctUtilityStdevScale", "drawEquivalentWinsForWhite",
    "dynamicScoreCenterScale", "dynamicScoreCenterZeroWeight", "dynamicScoreUtilityFactor",
    "enableMorePassingHacks", "enablePassingHacks", "endgameTurnTimeDecay",
    "evalCacheMinVisits", "fillDameBeforePass", "fpuLossProp", "fpuParentWeight",
    "fpuParentWeightByVisitedPolicy", "fpuParentWeightByVisitedPolicyPow", "fpuReductionMax",
    "futileVisitsThreshold", "graphSearchCatchUpLeakProb", "graphSearchRepBound",
    "humanSLChosenMoveIgnorePass", "humanSLChosenMovePiklLambda", "humanSLChosenMoveProp",
    "humanSLCpuctExploration", "humanSLCpuctPermanent", "humanSLOppExploreProbWeightful",
    "humanSLOppExploreProbWeightless", "humanSLPlaExploreProbWeightful",
    "humanSLPlaExploreProbWeightless", "humanSLProfile", "humanSLRootExploreProbWeightful",
    "humanSLRootExploreProbWeightless", "ignoreAllHistory", "ignorePreRootHistory",
    "inputsUseNHWC", "lagBuffer", "lcbStdevs", "maxBoardSizeForNNBuffer",
    "maxBoardXSizeForNNBuffer", "maxBoardYSizeForNNBuffer", "maxPlayouts",
    "maxPlayoutsPondering", "maxTime", "maxTimePondering", "maxVisits", "maxVisitsPondering",
    "midgameTimeFactor", "midgameTurnPeakTime", "minPlayoutsPerThread", "minVisitPropForLCB",
    "nnPolicyTemperature", "nnRandSeed", "noResultUtilityForWhite", "nodeTableShardsPowerOfTwo",
    "noisePruneUtilityScale", "noisePruningCap", "numSearchThreads",
    "numVirtualLossesPerThread", "obviousMovesPolicyEntropyTolerance",
    "obviousMovesPolicySurpriseTolerance", "obviousMovesTimeFactor", "overallocateTimeFactor",
    "playoutDoublingAdvantage", "playoutDoublingAdvantagePla", "policyOptimism",
    "requireMaxBoardSize", "rootDesiredPerChildVisitsCoeff",
    "rootDirichletNoiseTotalConcentration", "rootDirichletNoiseWeight", "rootEndingBonusPoints",
    "rootFpuLossProp", "rootFpuReductionMax", "rootNoiseEnabled", "rootNumSymmetriesToSample",
    "rootPolicyOptimism", "rootPolicyTemperature", "rootPolicyTemperatureEarly",
    "rootPruneUselessMoves", "rootSymmetryPruning", "searchFactorAfterOnePass",
    "searchFactorAfterTwoPass", "staticScoreUtilityFactor", "subtreeValueBiasFactor",
    "subtreeValueBiasFreeProp", "subtreeValueBiasWeightExponent",
    "treeReuseCarryOverTimeFactor", "uncertaintyCoeff", "uncertaintyExponent",
    "uncertaintyMaxWeight", "useEvalCache", "useGraphSearch", "useLcbForSelection",
    "useNoisePruning", "useNonBuggyLcb", "useUncertainty", "valueWeightExponent",
    "wideRootNoise", "winLossUtilityFactor"
})

_BACKEND = r"(?:cuda|trt|opencl|metal|eigen)"
_N = r"\d+"
_PATTERNS = [re.compile(p) for p in (
    # which device each neural-net server thread (of each model) uses
    rf"(?:{_BACKEND}(?:Device|Gpu)|device|gpu)ToUse(?:Model{_N})?(?:Thread{_N})?",
    rf"(?:{_BACKEND}U|u)seFP16(?:-{_N})?",
    rf"{_BACKEND}InputsUseNHWC(?:{_N})?",
    # avoidSgfPattern*, avoidSgf2Pattern*, ...: sets of SGF moves to avoid, per bot
    rf"avoidSgf(?:{_N})?Pattern(?:Utility|Lambda|MinTurnNumber|MaxFiles|AllowedNames|Dirs)(?:{_N})?",
    # autoAvoidRepeat*, optionally per board size (autoAvoidRepeatUtility19x19)
    rf"autoAvoidRepeat(?:Utility|Lambda|MinTurnNumber|MaxTurnNumber|MaxPoses)(?:{_N}x{_N})?",
)]
_INDEXED = re.compile(r"(.*?)\d+")


def is_known_key(key: str) -> bool:
    if key in KEYS or any(p.fullmatch(key) for p in _PATTERNS):
        return True
    indexed = _INDEXED.fullmatch(key)
    return indexed is not None and indexed.group(1) in INDEXED_KEYS


def close_keys(key: str) -> list[str]:
    """Known keys spelt like ``key``, for a "did you mean" hint."""
    return difflib.get_close_matches(key, KEYS, n=3, cutoff=0.75)
